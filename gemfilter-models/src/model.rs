//! A ready model: decoder + tokenizer + chat template, loaded from the files people have.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, Device};
use gemfilter_core::{
    Decoder, EarlyKv, FinishReason, GemFilterSelector, Generation, GenerationConfig, H2o,
    HeadSharing, KvCompressor, Method, PrefixCache, RunOptions, Sampling, SnapKv, TokenControl,
    TokenEvent, TokenSelector, generate_shared_prefill, generate_streaming,
};

use crate::arch::Architecture;
use crate::checkpoint::Resolved;
use crate::error::{ModelError, Result};
use crate::filter_layers::{FilterLayerChoice, filter_layer_for};
use crate::gguf::{self, GgufFile};
use crate::hf::chat::{ChatMessage, ChatTemplate};
use crate::hf::json::JsonFile;
use crate::hf::tokenizer::TextTokenizer;
use crate::hf::weights::{apply_tensors, read_checkpoint};
use crate::packing::{WeightFormat, WeightSummary, check_memory, pack_weights};

/// How to load weights.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype: activations, and the weights kept dense (f32 by default).
    pub dtype: DType,
    /// Which weights stay packed in blocks ([`WeightFormat::Native`] by default: a GGUF file's
    /// quantised tensors stay packed, a Hugging Face folder stays dense).
    pub weights: WeightFormat,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            weights: WeightFormat::Native,
        }
    }
}

/// The file format a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face folder (config.json, safetensors, tokenizer.json).
    HuggingFace,
    /// A llama.cpp GGUF file.
    Gguf,
}

impl ModelFormat {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::HuggingFace => "huggingface",
            ModelFormat::Gguf => "gguf",
        }
    }
}

/// Facts about a loaded model, for reports and `gemfilter inspect`.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The folder (or file) loaded.
    pub path: PathBuf,
    /// File format.
    pub format: ModelFormat,
    /// Architecture family.
    pub architecture: Architecture,
    /// Token ids that end generation (config.json and generation_config.json together).
    pub eos_token_ids: Vec<u32>,
    /// The default filter layer and where it came from.
    pub filter_layer: FilterLayerChoice,
    /// Weight files read.
    pub weight_files: Vec<PathBuf>,
    /// Checkpoint tensors the architecture did not use.
    pub unused_tensors: Vec<String>,
    /// The weight format asked for.
    pub weight_format: WeightFormat,
    /// How the weights are stored: packed per format, and dense.
    pub weights: WeightSummary,
}

/// A decoder with its tokenizer and chat template. Immutable once loaded: share it behind an
/// `Arc` and answer requests from several threads; each [`Request`] carries its own settings.
#[derive(Debug)]
pub struct Model {
    decoder: Decoder,
    tokenizer: TextTokenizer,
    chat_template: Option<ChatTemplate>,
    info: ModelInfo,
}

const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Model>();
    shareable::<Request>();
};

/// Which attention the answer is computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Standard attention over the whole prompt.
    Full,
    /// GemFilter with `top_k` kept tokens; `filter_layer: None` uses the model's default.
    GemFilter {
        /// 0-based filter layer, or the model's default.
        filter_layer: Option<usize>,
        /// Token budget k.
        top_k: usize,
    },
    /// Propagation (FastKV / PromptDistill family): GemFilter's selection of `top_k` tokens,
    /// then the layers from the filter layer on run over the kept tokens' hidden states instead
    /// of a rerun (see [`gemfilter_core::propagate`]).
    Propagate {
        /// 0-based filter layer, or the model's default.
        filter_layer: Option<usize>,
        /// Token budget k.
        top_k: usize,
        /// Which early-layer keys and values decoding sees.
        early_kv: EarlyKv,
    },
    /// A KV-compression baseline (SnapKV or H2O with their reference settings): full prefill,
    /// then `budget` cache entries per layer and head.
    KvCompressed {
        /// Which method.
        method: KvMethod,
        /// Cache entries kept per layer and head (compared with GemFilter's k).
        budget: usize,
        /// Which heads share kept positions.
        heads: HeadSharing,
    },
}

/// The KV-compression baselines of the paper's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvMethod {
    /// SnapKV: observation window 32, average pooling with kernel 5.
    SnapKv,
    /// H2O: accumulated attention heavy hitters plus 32 recent positions.
    H2o,
}

impl KvMethod {
    /// The compressor with the reference settings at `budget`.
    pub fn compressor(self, budget: usize, heads: HeadSharing) -> Box<dyn KvCompressor> {
        match self {
            KvMethod::SnapKv => Box::new(SnapKv {
                heads,
                ..SnapKv::new(budget)
            }),
            KvMethod::H2o => Box::new(H2o {
                heads,
                ..H2o::new(budget)
            }),
        }
    }

    /// `snapkv` or `h2o`.
    pub fn name(self) -> &'static str {
        match self {
            KvMethod::SnapKv => "snapkv",
            KvMethod::H2o => "h2o",
        }
    }
}

/// A text generation request. It owns everything it needs, so it can be sent to another thread
/// (a server's worker) and kept.
#[derive(Clone)]
pub struct Request {
    /// Full or GemFilter.
    pub mode: Mode,
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Wrap the prompt as one user turn of the model's chat template.
    pub chat: bool,
    /// Greedy or nucleus sampling.
    pub sampling: Sampling,
    /// Selection rule in GemFilter mode (the paper's selector when `None`).
    pub selector: Option<Arc<dyn TokenSelector>>,
    /// Attention kernel, chunking and progress of the passes.
    pub run: RunOptions,
    /// Keep generating past end-of-sequence tokens, up to `max_new_tokens` (benchmarks).
    pub ignore_eos: bool,
    /// Generation stops where the text first contains one of these (it is not included).
    pub stop: Vec<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("mode", &self.mode)
            .field("max_new_tokens", &self.max_new_tokens)
            .field("chat", &self.chat)
            .field("sampling", &self.sampling)
            .field(
                "selector",
                &self.selector.as_ref().map(|s| s.name().to_string()),
            )
            .field("run", &self.run)
            .field("ignore_eos", &self.ignore_eos)
            .field("stop", &self.stop)
            .finish()
    }
}

impl Request {
    /// GemFilter with the paper's selector at the model's default layer, greedy, 64 tokens.
    pub fn gemfilter(top_k: usize) -> Self {
        Self {
            mode: Mode::GemFilter {
                filter_layer: None,
                top_k,
            },
            ..Self::full()
        }
    }

    /// Full attention, greedy, 64 tokens.
    pub fn full() -> Self {
        Self {
            mode: Mode::Full,
            max_new_tokens: 64,
            chat: false,
            sampling: Sampling::Greedy,
            selector: None,
            run: RunOptions::default(),
            ignore_eos: false,
            stop: Vec::new(),
        }
    }
}

/// A generated answer with everything needed to explain it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The answer text (special tokens removed).
    pub text: String,
    /// The prompt as token ids (after the chat template, if any).
    pub prompt_ids: Vec<u32>,
    /// Filter layer used, in GemFilter mode.
    pub filter_layer: Option<usize>,
    /// Token budget, in GemFilter mode.
    pub top_k: Option<usize>,
    /// Token-level result: answer ids, selection, timings.
    pub generation: Generation,
}

/// New answer text from one generated token, as [`Model::generate_streaming`] hands it out.
#[derive(Debug, Clone)]
pub struct TextDelta {
    /// Text added since the previous delta (may be empty while a multi-byte character or a
    /// possible stop sequence is incomplete).
    pub text: String,
    /// The token's id.
    pub token: u32,
    /// Tokens generated so far, this one included.
    pub generated: usize,
    /// Phase timings so far.
    pub timings: gemfilter_core::PhaseTimings,
}

/// A run of consecutive kept prompt positions and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSpan {
    /// First kept position of the run.
    pub start: usize,
    /// One past the last kept position.
    pub end: usize,
    /// Decoded text of the run.
    pub text: String,
}

/// What one streaming call carries besides the prompt and method.
struct Run<'a> {
    request: &'a Request,
    prefix_cache: Option<&'a mut PrefixCache>,
    on_delta: &'a mut (dyn FnMut(&TextDelta) -> TokenControl + Send),
}

/// The answer's text as tokens arrive: decoded incrementally, characters split across tokens
/// and possible starts of a stop sequence held back until they resolve.
struct StreamingText<'a> {
    stop: &'a [String],
    tokens: Vec<u32>,
    /// The text handed out so far.
    emitted: String,
    /// The whole text, cut at a stop sequence once one appears.
    text: String,
    stopped: bool,
}

/// What one token added.
struct Piece {
    text: String,
    stopped: bool,
}

impl<'a> StreamingText<'a> {
    fn new(stop: &'a [String]) -> Self {
        Self {
            stop,
            tokens: Vec::new(),
            emitted: String::new(),
            text: String::new(),
            stopped: false,
        }
    }

    fn push(&mut self, tokenizer: &TextTokenizer, token: u32) -> Result<Piece> {
        if self.stopped {
            return Ok(Piece {
                text: String::new(),
                stopped: true,
            });
        }
        self.tokens.push(token);
        self.text = tokenizer.decode(&self.tokens, true)?;
        // A character split across tokens decodes to U+FFFD until its last byte arrives.
        let settled = self.text.trim_end_matches('\u{FFFD}').len();
        let search_from = floor_char_boundary(
            &self.text,
            self.emitted
                .len()
                .saturating_sub(self.stop.iter().map(String::len).max().unwrap_or(0)),
        );
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| {
                self.text[search_from..]
                    .find(s.as_str())
                    .map(|i| i + search_from)
            })
            .min()
        {
            self.text.truncate(at);
            self.stopped = true;
            return Ok(Piece {
                text: self.take_up_to(at),
                stopped: true,
            });
        }
        // Hold back a tail that may begin a stop sequence.
        let held = self
            .stop
            .iter()
            .map(|s| partial_match(&self.text[..settled], s))
            .max()
            .unwrap_or(0);
        Ok(Piece {
            text: self.take_up_to(settled - held),
            stopped: false,
        })
    }

    /// The text from what was emitted up to byte `end` (never backwards).
    fn take_up_to(&mut self, end: usize) -> String {
        let start = self.emitted.len();
        if end <= start || !self.text.is_char_boundary(end) || !self.text.starts_with(&self.emitted)
        {
            return String::new();
        }
        let piece = self.text[start..end].to_string();
        self.emitted.push_str(&piece);
        piece
    }

    /// The text not yet handed out, once generation ended.
    fn finish(&mut self) -> String {
        let end = self.text.len();
        self.take_up_to(end)
    }

    fn stopped(&self) -> bool {
        self.stopped
    }

    fn into_text(self) -> String {
        self.text
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_match(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| stop.is_char_boundary(n) && text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

/// The largest char boundary of `text` at or below `index`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    let mut index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// Marker placed between non-adjacent kept spans in [`Model::kept_text`].
pub const GAP_MARKER: &str = " [...] ";

impl Model {
    /// Loads a model — a Hugging Face folder or a GGUF file — onto `device` in f32.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::load_with(path, device, &LoadOptions::default())
    }

    /// Loads a model — a Hugging Face folder or a GGUF file — onto `device` with `options`.
    pub fn load_with(
        path: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::NotFound {
                what: "model (a Hugging Face folder or a .gguf file)".into(),
                path: path.to_path_buf(),
            });
        }
        if path.is_dir() {
            Self::load_hf_folder(path, device, options)
        } else if gguf::is_gguf(path) {
            Self::load_gguf(path, device, options)
        } else {
            Err(ModelError::CorruptWeights {
                path: path.to_path_buf(),
                message: "neither a Hugging Face model folder nor a GGUF file (no GGUF magic)"
                    .into(),
            })
        }
    }

    fn load_hf_folder(folder: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        let config = JsonFile::read(&folder.join("config.json"), "config.json")?;
        let architecture = Architecture::detect(&config)?;
        let decoder_config = architecture.decoder_config(&config)?;
        let manifest = architecture.tensor_manifest(&decoder_config);
        let tokenizer = TextTokenizer::from_file(&folder.join("tokenizer.json"))?;
        let chat_template = ChatTemplate::from_folder(folder)?;
        let eos_token_ids = eos_token_ids(folder, &config)?;

        let (tensors, report) = read_checkpoint(folder, &manifest)?;
        let (decoder, weights) = build_decoder(decoder_config, tensors, options, device, folder)?;
        let filter_layer = filter_layer_for(folder, architecture, decoder.config());
        Ok(Self {
            decoder,
            tokenizer,
            chat_template,
            info: ModelInfo {
                path: folder.to_path_buf(),
                format: ModelFormat::HuggingFace,
                architecture,
                eos_token_ids,
                filter_layer,
                weight_files: report.files,
                unused_tensors: report.unused,
                weight_format: options.weights,
                weights,
            },
        })
    }

    fn load_gguf(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let architecture = gguf::architecture(&file)?;
        let config = gguf::hf_config(&file, architecture)?;
        let mut decoder_config = architecture.decoder_config(&config)?;
        let manifest = architecture.tensor_manifest(&decoder_config);
        let checkpoint = gguf::checkpoint_tensors(&file, architecture, &manifest, &decoder_config)?;
        gguf::apply_rope_factors(&mut decoder_config, checkpoint.rope_factors);
        let tokenizer = gguf::tokenizer_from_gguf(&file)?;
        let token_text = |key: &str| {
            file.get(key)
                .and_then(|v| v.as_u64())
                .and_then(|id| tokenizer.inner().id_to_token(id as u32))
                .unwrap_or_default()
        };
        let chat_template = match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            Some(source) => Some(ChatTemplate::new(
                source,
                token_text("tokenizer.ggml.bos_token_id"),
                token_text("tokenizer.ggml.eos_token_id"),
            )?),
            None => None,
        };
        let eos_token_ids = gguf::eos_token_ids(&file);
        let (decoder, weights) =
            build_decoder(decoder_config, checkpoint.tensors, options, device, path)?;
        file.release_resident_pages();
        let filter_layer = filter_layer_for(path, architecture, decoder.config());
        Ok(Self {
            decoder,
            tokenizer,
            chat_template,
            info: ModelInfo {
                path: path.to_path_buf(),
                format: ModelFormat::Gguf,
                architecture,
                eos_token_ids,
                filter_layer,
                weight_files: vec![path.to_path_buf()],
                unused_tensors: checkpoint.unused,
                weight_format: options.weights,
                weights,
            },
        })
    }

    /// Assembles a model from parts built elsewhere.
    pub fn from_parts(
        decoder: Decoder,
        tokenizer: TextTokenizer,
        chat_template: Option<ChatTemplate>,
        info: ModelInfo,
    ) -> Self {
        Self {
            decoder,
            tokenizer,
            chat_template,
            info,
        }
    }

    /// The same model with every packed weight dequantised to the compute dtype (the arithmetic
    /// the packed blocks stand for), to measure the packed kernels against.
    pub fn dequantized(&self) -> Model {
        let mut info = self.info.clone();
        info.weight_format = WeightFormat::Dense;
        Model {
            decoder: self.decoder.dequantized(),
            tokenizer: self.tokenizer.clone(),
            chat_template: self.chat_template.clone(),
            info,
        }
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The chat template, when the model ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Facts about the model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids of a prompt: plain (special tokens as the tokenizer's post-processor adds
    /// them) or, with `chat`, as one user turn of the chat template.
    pub fn prompt_ids(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            let template = self.chat_template.as_ref().ok_or_else(|| {
                ModelError::ChatTemplate(format!(
                    "{} has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)",
                    self.info.path.display()
                ))
            })?;
            let text = template.render(&[ChatMessage::user(prompt)], true)?;
            // The template writes any BOS itself, as transformers' apply_chat_template assumes.
            self.tokenizer.encode(&text, false)
        } else {
            self.tokenizer.encode(prompt, true)
        }
    }

    /// Answers `prompt` as `request` says.
    pub fn generate(&self, prompt: &str, request: &Request) -> Result<Answer> {
        let ids = self.prompt_ids(prompt, request.chat)?;
        self.generate_ids(&ids, request)
    }

    /// Token ids of a conversation rendered with the chat template, the assistant header
    /// appended.
    pub fn chat_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            ModelError::ChatTemplate(format!(
                "{} has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)",
                self.info.path.display()
            ))
        })?;
        let text = template.render(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Answers a prompt given as token ids.
    pub fn generate_ids(&self, prompt_ids: &[u32], request: &Request) -> Result<Answer> {
        self.generate_streaming(prompt_ids, request, None, &mut |_| TokenControl::Continue)
    }

    /// Answers a prompt given as token ids, handing each piece of new text to `on_delta` as
    /// soon as it is known (return [`TokenControl::Stop`] to end early), stopping at
    /// `request.stop` sequences, and reusing prompt-prefix work through `prefix_cache` (see
    /// [`PrefixCache`]). Cancel from another thread with `request.run.cancel`.
    pub fn generate_streaming(
        &self,
        prompt_ids: &[u32],
        request: &Request,
        prefix_cache: Option<&mut PrefixCache>,
        on_delta: &mut (dyn FnMut(&TextDelta) -> TokenControl + Send),
    ) -> Result<Answer> {
        if request.stop.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Core(
                gemfilter_core::CoreError::InvalidParameter(
                    "stop sequences must not be empty".into(),
                ),
            ));
        }
        let run = Run {
            request,
            prefix_cache,
            on_delta,
        };
        let paper_selector = GemFilterSelector::default();
        let selector: &dyn TokenSelector = match &request.selector {
            Some(selector) => selector.as_ref(),
            None => &paper_selector,
        };
        let (method, filter_layer, top_k) = match request.mode {
            Mode::Full => (Method::Full, None, None),
            Mode::GemFilter {
                filter_layer,
                top_k,
            } => {
                let layer = filter_layer.unwrap_or(self.info.filter_layer.layer);
                (
                    Method::GemFilter {
                        filter_layer: layer,
                        top_k,
                        selector,
                    },
                    Some(layer),
                    Some(top_k),
                )
            }
            Mode::Propagate {
                filter_layer,
                top_k,
                early_kv,
            } => {
                let layer = filter_layer.unwrap_or(self.info.filter_layer.layer);
                (
                    Method::Propagate {
                        filter_layer: layer,
                        top_k,
                        selector,
                        early_kv,
                    },
                    Some(layer),
                    Some(top_k),
                )
            }
            Mode::KvCompressed {
                method,
                budget,
                heads,
            } => {
                let compressor = method.compressor(budget, heads);
                return self.answer(
                    prompt_ids,
                    Method::KvCompressed(compressor.as_ref()),
                    run,
                    None,
                    Some(budget),
                );
            }
        };
        self.answer(prompt_ids, method, run, filter_layer, top_k)
    }

    /// Answers from the positions of `selection`, made beforehand (for instance by several
    /// selectors scored from one shared pass, see [`Decoder::probe_layers`]); `request.mode` is
    /// ignored, `selection_layer` is reported as the filter layer.
    ///
    /// [`Decoder::probe_layers`]: gemfilter_core::Decoder::probe_layers
    pub fn generate_preselected(
        &self,
        prompt_ids: &[u32],
        selection: &gemfilter_core::Selection,
        selection_layer: usize,
        request: &Request,
    ) -> Result<Answer> {
        let top_k = selection.positions.len();
        let run = Run {
            request,
            prefix_cache: None,
            on_delta: &mut |_| TokenControl::Continue,
        };
        self.answer(
            prompt_ids,
            Method::Preselected(selection),
            run,
            Some(selection_layer),
            Some(top_k),
        )
    }

    /// The core's settings for `request`.
    fn generation_config(&self, request: &Request) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: request.max_new_tokens,
            eos_token_ids: if request.ignore_eos {
                Vec::new()
            } else {
                self.info.eos_token_ids.clone()
            },
            sampling: request.sampling,
            run: request.run.clone(),
        }
    }

    /// Answers one prompt with several methods that prefill the whole prompt (full attention,
    /// SnapKV and H2O at any budgets, `Mode::Full` / `Mode::KvCompressed`) from **one** prefill:
    /// the pass is the same for all, each method keeps its own cache of it and decodes on its
    /// own (see [`gemfilter_core::generate_shared_prefill`]). Answers come back in the order of
    /// `modes`, each as [`generate_ids`](Self::generate_ids) would give it (`request.mode` is
    /// ignored); their prefill time is the shared pass. GemFilter modes are refused: their
    /// passes differ (share selection passes with [`generate_preselected`](Self::generate_preselected)).
    pub fn generate_shared(
        &self,
        prompt_ids: &[u32],
        modes: &[Mode],
        request: &Request,
    ) -> Result<Vec<Answer>> {
        let invalid = |message: String| {
            ModelError::Core(gemfilter_core::CoreError::InvalidParameter(message))
        };
        if request.stop.iter().any(|s| s.is_empty()) {
            return Err(invalid("stop sequences must not be empty".into()));
        }
        let mut full_at = None;
        let mut compressors: Vec<Box<dyn KvCompressor>> = Vec::new();
        let mut order = Vec::with_capacity(modes.len());
        for mode in modes {
            match *mode {
                Mode::Full => {
                    if full_at.is_some() {
                        return Err(invalid("full attention is listed twice".into()));
                    }
                    full_at = Some(order.len());
                    order.push(None);
                }
                Mode::KvCompressed {
                    method,
                    budget,
                    heads,
                } => {
                    order.push(Some(compressors.len()));
                    compressors.push(method.compressor(budget, heads));
                }
                Mode::GemFilter { .. } | Mode::Propagate { .. } => {
                    return Err(invalid(
                        "a shared prefill serves full attention and KV compression only; GemFilter and propagation run their own selection pass".into(),
                    ));
                }
            }
        }
        let config = self.generation_config(request);
        let has_full = full_at.is_some();
        let branches = usize::from(has_full) + compressors.len();
        let mut texts: Vec<StreamingText> = (0..branches)
            .map(|_| StreamingText::new(&request.stop))
            .collect();
        let mut failure = None;
        let refs: Vec<&dyn KvCompressor> = compressors.iter().map(|c| c.as_ref()).collect();
        let generations = generate_shared_prefill(
            &self.decoder,
            prompt_ids,
            has_full,
            &refs,
            &config,
            &mut |branch, event| match texts[branch].push(&self.tokenizer, event.token) {
                Ok(piece) if piece.stopped => TokenControl::Stop,
                Ok(_) => TokenControl::Continue,
                Err(error) => {
                    failure = Some(error);
                    TokenControl::Stop
                }
            },
        )?;
        if let Some(error) = failure {
            return Err(error);
        }
        let mut answers: Vec<Option<Answer>> = generations
            .into_iter()
            .zip(texts)
            .map(|(mut generation, mut text)| {
                let _ = text.finish();
                if text.stopped() {
                    generation.finish_reason = FinishReason::Stopped;
                }
                Some(Answer {
                    text: text.into_text(),
                    prompt_ids: prompt_ids.to_vec(),
                    filter_layer: None,
                    top_k: None,
                    generation,
                })
            })
            .collect();
        Ok(order
            .into_iter()
            .map(|slot| {
                let branch = match slot {
                    None => 0,
                    Some(c) => usize::from(has_full) + c,
                };
                let mut answer = answers[branch].take().expect("each branch answered once");
                if let Some(c) = slot {
                    answer.top_k = Some(compressors[c].budget());
                }
                answer
            })
            .collect())
    }

    fn answer(
        &self,
        prompt_ids: &[u32],
        method: Method<'_>,
        run: Run<'_>,
        filter_layer: Option<usize>,
        top_k: Option<usize>,
    ) -> Result<Answer> {
        let Run {
            request,
            prefix_cache,
            on_delta,
        } = run;
        let config = self.generation_config(request);
        let mut text = StreamingText::new(&request.stop);
        let mut failure = None;
        let mut on_token = |event: &TokenEvent| {
            let piece = match text.push(&self.tokenizer, event.token) {
                Ok(piece) => piece,
                Err(error) => {
                    failure = Some(error);
                    return TokenControl::Stop;
                }
            };
            let delta = TextDelta {
                text: piece.text,
                token: event.token,
                generated: event.generated,
                timings: event.timings,
            };
            let wanted = on_delta(&delta);
            if piece.stopped {
                TokenControl::Stop
            } else {
                wanted
            }
        };
        let mut generation = generate_streaming(
            &self.decoder,
            prompt_ids,
            method,
            &config,
            prefix_cache,
            &mut on_token,
        )?;
        if let Some(error) = failure {
            return Err(error);
        }
        // Whatever was held back (an incomplete stop sequence that never completed) is text.
        let rest = text.finish();
        if !rest.is_empty() {
            on_delta(&TextDelta {
                text: rest,
                token: *generation.tokens.last().unwrap_or(&0),
                generated: generation.tokens.len(),
                timings: generation.timings,
            });
        }
        if text.stopped() {
            generation.finish_reason = FinishReason::Stopped;
        }
        Ok(Answer {
            text: text.into_text(),
            prompt_ids: prompt_ids.to_vec(),
            filter_layer,
            top_k,
            generation,
        })
    }

    /// The kept prompt text of a GemFilter answer as runs of consecutive positions (empty in
    /// full mode).
    pub fn kept_spans(&self, answer: &Answer) -> Result<Vec<KeptSpan>> {
        let Some(selection) = &answer.generation.selection else {
            return Ok(Vec::new());
        };
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for &p in &selection.positions {
            match spans.last_mut() {
                Some((_, end)) if *end == p => *end = p + 1,
                _ => spans.push((p, p + 1)),
            }
        }
        spans
            .into_iter()
            .map(|(start, end)| {
                Ok(KeptSpan {
                    start,
                    end,
                    text: self
                        .tokenizer
                        .decode(&answer.prompt_ids[start..end], false)?,
                })
            })
            .collect()
    }

    /// The kept prompt text, runs joined by [`GAP_MARKER`] where positions were dropped.
    pub fn kept_text(&self, answer: &Answer) -> Result<String> {
        let spans = self.kept_spans(answer)?;
        let mut text = String::new();
        let mut previous_end = 0;
        for span in &spans {
            if span.start > previous_end {
                text.push_str(GAP_MARKER);
            }
            text.push_str(&span.text);
            previous_end = span.end;
        }
        if previous_end < answer.prompt_ids.len() && !spans.is_empty() {
            text.push_str(GAP_MARKER);
        }
        Ok(text)
    }
}

/// A decoder with `tensors` loaded as `options` say: memory checked first, packed parameters
/// placed, the rest applied dense in the compute dtype.
fn build_decoder(
    config: gemfilter_core::DecoderConfig,
    tensors: Vec<Resolved>,
    options: &LoadOptions,
    device: &Device,
    source: &Path,
) -> Result<(Decoder, WeightSummary)> {
    check_memory(&tensors, options.weights, options.dtype, device, source)?;
    let tied = config.tie_word_embeddings;
    let mut decoder = Decoder::new(config, device)?;
    let (dense, summary) = pack_weights(
        decoder.weights_mut(),
        tensors,
        options.weights,
        tied,
        options.dtype,
        device,
        source,
    )?;
    apply_tensors(decoder.weights_mut(), dense, options.dtype, source)?;
    Ok((decoder, summary))
}

/// EOS ids from `config.json` and, when present, `generation_config.json` (LLaMA 3.1 Instruct
/// lists its end-of-turn tokens only there), in order, without duplicates.
fn eos_token_ids(folder: &Path, config: &JsonFile) -> Result<Vec<u32>> {
    let mut ids = config.token_ids("eos_token_id")?;
    let generation_path = folder.join("generation_config.json");
    if generation_path.is_file() {
        let generation = JsonFile::read(&generation_path, "generation_config.json")?;
        for id in generation.token_ids("eos_token_id")? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::{floor_char_boundary, partial_match};

    #[test]
    fn partial_match_finds_a_possible_stop_start() {
        assert_eq!(partial_match("Hello ##", "###"), 2);
        assert_eq!(partial_match("Hello #", "###"), 1);
        assert_eq!(partial_match("Hello", "###"), 0);
        // A complete match is not partial: the caller finds it first.
        assert_eq!(partial_match("a###", "###"), 2);
        assert_eq!(floor_char_boundary("aé", 2), 1);
    }
}
