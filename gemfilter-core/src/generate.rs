//! The generation pipeline: optional GemFilter selection pass, prefill, cached decoding.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::compress::{CompressionOutcome, KvCompressor};
use crate::decoder::Decoder;
use crate::error::{CoreError, Result};
use crate::kv::KvCache;
use crate::options::RunOptions;
use crate::prefix::PrefixCache;
use crate::propagate::{EarlyKv, StagedPass};
use crate::selector::{Selection, TokenSelector};

/// How the next token is chosen from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Sampling {
    /// Always the most likely token (the first one on ties).
    #[default]
    Greedy,
    /// Nucleus sampling: temperature-scaled softmax restricted to the smallest set of tokens
    /// whose probability reaches `top_p`, drawn from a generator seeded with `seed`.
    TopP {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Probability mass kept, in (0, 1].
        top_p: f32,
        /// Seed of the random generator (same seed, same output).
        seed: u64,
    },
}

/// Which prompt the model answers from.
#[derive(Clone, Copy)]
pub enum Method<'a> {
    /// Standard attention over the whole prompt.
    Full,
    /// GemFilter: select with `selector` at `filter_layer`, keep `top_k` tokens, rerun on them.
    GemFilter {
        /// Layer whose probe drives the selection (the paper's r).
        filter_layer: usize,
        /// Token budget k.
        top_k: usize,
        /// The selection rule.
        selector: &'a dyn TokenSelector,
    },
    /// Answer from the positions of a selection made beforehand (e.g. several selectors scored
    /// from one shared pass): the prompt is reduced to them and rerun, as GemFilter does.
    Preselected(&'a Selection),
    /// A KV-compression baseline (SnapKV, H2O): full prefill over the whole prompt, then the
    /// cache keeps `budget` entries per layer and head; decoding continues on it.
    KvCompressed(&'a dyn KvCompressor),
    /// Propagation (FastKV / PromptDistill family, see [`propagate`](crate::propagate)): select
    /// `top_k` tokens at `filter_layer` as GemFilter does, then run the layers from there on over
    /// the kept tokens' hidden states at their original positions (no rerun); decoding continues
    /// at position n with the early layers' keys and values chosen by `early_kv`.
    Propagate {
        /// Layer whose probe drives the (final) selection.
        filter_layer: usize,
        /// Token budget k.
        top_k: usize,
        /// The selection rule (with its stages, if any).
        selector: &'a dyn TokenSelector,
        /// Which early-layer keys and values decoding sees.
        early_kv: EarlyKv,
    },
}

impl std::fmt::Debug for Method<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Full => f.write_str("Full"),
            Method::GemFilter {
                filter_layer,
                top_k,
                selector,
            } => f
                .debug_struct("GemFilter")
                .field("filter_layer", filter_layer)
                .field("top_k", top_k)
                .field("selector", &selector.name())
                .finish(),
            Method::Preselected(selection) => f
                .debug_tuple("Preselected")
                .field(&selection.positions.len())
                .finish(),
            Method::KvCompressed(compressor) => f
                .debug_struct("KvCompressed")
                .field("method", &compressor.name())
                .field("budget", &compressor.budget())
                .finish(),
            Method::Propagate {
                filter_layer,
                top_k,
                selector,
                early_kv,
            } => f
                .debug_struct("Propagate")
                .field("filter_layer", filter_layer)
                .field("top_k", top_k)
                .field("selector", &selector.name())
                .field("early_kv", early_kv)
                .finish(),
        }
    }
}

/// Decoding parameters, and how the passes run.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens.
    pub max_new_tokens: usize,
    /// Generation stops (without emitting it) at any of these tokens.
    pub eos_token_ids: Vec<u32>,
    /// Token choice rule.
    pub sampling: Sampling,
    /// Attention kernel, chunking and progress of every pass.
    pub run: RunOptions,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`, stopping at any of `eos_token_ids`.
    pub fn greedy(max_new_tokens: usize, eos_token_ids: Vec<u32>) -> Self {
        Self {
            max_new_tokens,
            eos_token_ids,
            sampling: Sampling::Greedy,
            run: RunOptions::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        if let Sampling::TopP {
            temperature, top_p, ..
        } = self.sampling
        {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(CoreError::InvalidParameter(format!(
                    "temperature must be a positive number, got {temperature}"
                )));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(CoreError::InvalidParameter(format!(
                    "top-p must be in (0, 1], got {top_p}"
                )));
            }
        }
        Ok(())
    }
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced.
    Eos,
    /// `max_new_tokens` were produced.
    MaxNewTokens,
    /// The model's position range is exhausted.
    ContextFull,
    /// The token callback asked to stop (a stop sequence appeared in the text).
    Stopped,
}

/// One generated token, as the streaming callback of [`generate_streaming`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct TokenEvent {
    /// The token id.
    pub token: u32,
    /// Tokens generated so far, this one included.
    pub generated: usize,
    /// Phase timings so far (`select + prefill` is the time to first token).
    pub timings: PhaseTimings,
}

/// What the streaming callback wants after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenControl {
    /// Keep generating.
    Continue,
    /// Stop now with [`FinishReason::Stopped`] (the token is kept).
    Stop,
}

/// Wall time of each phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PhaseTimings {
    /// Selection pass (early-exit forward + scoring); zero in full mode.
    pub select: Duration,
    /// Forward over the (reduced) prompt up to the first token's logits.
    pub prefill: Duration,
    /// Every later token.
    pub decode: Duration,
}

impl PhaseTimings {
    /// Time to first token: selection plus prefill.
    pub fn time_to_first_token(&self) -> Duration {
        self.select + self.prefill
    }
}

/// Everything a generation produced.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated token ids (EOS excluded).
    pub tokens: Vec<u32>,
    /// Length of the original prompt.
    pub input_tokens: usize,
    /// Tokens the model actually attended to when answering (`n` in full mode).
    pub kept_tokens: usize,
    /// The selection, in GemFilter mode.
    pub selection: Option<Selection>,
    /// GemFilter mode only: the prompt fitted in the budget, so the selection pass was not run
    /// (its result was known: every token) and `selection` keeps every position with zero
    /// scores. The answer is then the full path's.
    pub selection_skipped: bool,
    /// The positions each layer and head kept, for a KV-compression method.
    pub compression: Option<CompressionOutcome>,
    /// Prompt positions whose work came from a [`PrefixCache`] (early layers of the selection
    /// pass for GemFilter, every layer for full attention); 0 without one or on a miss.
    pub reused_tokens: usize,
    /// Why decoding stopped.
    pub finish_reason: FinishReason,
    /// Per-phase wall time.
    pub timings: PhaseTimings,
    /// Bytes of key/value storage decoding ran on (every layer, room for the new tokens
    /// included).
    pub kv_cache_bytes: usize,
}

/// Runs the GemFilter selection pass only: one pass up to `filter_layer` (or up to the highest
/// layer the selector reads, which may not exceed it) capturing the probes the selector asks for,
/// then `selector`.
pub fn select_tokens(
    decoder: &Decoder,
    prompt: &[u32],
    filter_layer: usize,
    top_k: usize,
    selector: &dyn TokenSelector,
    options: &RunOptions,
) -> Result<Selection> {
    if top_k == 0 {
        return Err(CoreError::ZeroTopK);
    }
    let layers = checked_layers(selector, filter_layer)?;
    if !selector.stages().is_empty() {
        let selection = decoder.staged_selection(prompt, filter_layer, top_k, selector, options)?;
        selection.validate(selector.name(), prompt.len(), top_k)?;
        return Ok(selection);
    }
    let probes = decoder.probe_layers(prompt, &layers, selector.query_window(), options)?;
    let selection = selector.select_layers(&probes, top_k)?;
    selection.validate(selector.name(), prompt.len(), top_k)?;
    Ok(selection)
}

/// [`select_tokens`] whose pass continues from the longest prefix of `prompt` that
/// `prefix_cache` holds (see [`PrefixCache`]) and leaves its own state there. Returns the
/// selection and the number of positions reused; the selection is the one [`select_tokens`]
/// makes. A selector with [stages](TokenSelector::stages) runs its own pass and reuses nothing.
pub fn select_tokens_reusing(
    decoder: &Decoder,
    prompt: &[u32],
    filter_layer: usize,
    top_k: usize,
    selector: &dyn TokenSelector,
    options: &RunOptions,
    prefix_cache: &mut PrefixCache,
) -> Result<(Selection, usize)> {
    if top_k == 0 {
        return Err(CoreError::ZeroTopK);
    }
    let layers = checked_layers(selector, filter_layer)?;
    if !selector.stages().is_empty() {
        let selection = select_tokens(decoder, prompt, filter_layer, top_k, selector, options)?;
        return Ok((selection, 0));
    }
    let (probes, reused) = decoder.probe_layers_reusing(
        prompt,
        &layers,
        selector.query_window(),
        options,
        prefix_cache,
    )?;
    let selection = selector.select_layers(&probes, top_k)?;
    selection.validate(selector.name(), prompt.len(), top_k)?;
    Ok((selection, reused))
}

/// The layers `selector` reads at `filter_layer`, none above it.
fn checked_layers(selector: &dyn TokenSelector, filter_layer: usize) -> Result<Vec<usize>> {
    let layers = selector.layers(filter_layer);
    if let Some(&above) = layers.iter().find(|&&l| l > filter_layer) {
        return Err(CoreError::InvalidSelector {
            selector: selector.name().to_string(),
            reason: format!(
                "it reads layer {above}, above the filter layer {filter_layer}: the selection pass stops there"
            ),
        });
    }
    Ok(layers)
}

/// Generates an answer to `prompt` with `method`.
///
/// GemFilter mode: selection pass → gather the kept ids → fresh forward on them at positions
/// `0..k` → cached decoding. Full mode skips the first two steps. Both share one decoder.
pub fn generate(
    decoder: &Decoder,
    prompt: &[u32],
    method: Method<'_>,
    config: &GenerationConfig,
) -> Result<Generation> {
    generate_streaming(decoder, prompt, method, config, None, &mut |_| {
        TokenControl::Continue
    })
}

/// [`generate`], handing each token to `on_token` as soon as it is chosen (which may stop the
/// generation), and reusing prompt-prefix work through `prefix_cache` when one is given: the
/// selection pass's early layers for GemFilter, the whole KV cache for full attention (the
/// KV-compression baselines do not reuse). Raising `config.run.cancel` from another thread ends
/// the call with [`CoreError::Cancelled`] at the next layer.
pub fn generate_streaming(
    decoder: &Decoder,
    prompt: &[u32],
    method: Method<'_>,
    config: &GenerationConfig,
    prefix_cache: Option<&mut PrefixCache>,
    on_token: &mut (dyn FnMut(&TokenEvent) -> TokenControl + Send),
) -> Result<Generation> {
    // On a worker of rayon's pool: the CPU kernels' hundreds of small parallel products per
    // decode step then split work with the other workers directly, instead of each one
    // handing a job to the pool and blocking this thread until it is done (two context
    // switches per product; half of a SmolLM2 decode step went to them).
    rayon::scope(|_| generate_on_worker(decoder, prompt, method, config, prefix_cache, on_token))
}

fn generate_on_worker(
    decoder: &Decoder,
    prompt: &[u32],
    method: Method<'_>,
    config: &GenerationConfig,
    mut prefix_cache: Option<&mut PrefixCache>,
    on_token: &mut (dyn FnMut(&TokenEvent) -> TokenControl + Send),
) -> Result<Generation> {
    let max_positions = check_request(decoder, prompt, config)?;
    let mut timings = PhaseTimings::default();

    let started = Instant::now();
    let mut selection_skipped = false;
    let mut reused_tokens = 0;
    let mut staged: Option<StagedPass> = None;
    let (reduced, selection) = match method {
        Method::Full | Method::KvCompressed(_) => (prompt.to_vec(), None),
        Method::GemFilter {
            top_k, selector, ..
        } if top_k > 0 && prompt.len() <= top_k && selector.keeps_every_token_within_budget() => {
            selection_skipped = true;
            (prompt.to_vec(), Some(Selection::whole_prompt(prompt.len())))
        }
        Method::GemFilter {
            filter_layer,
            top_k,
            selector,
        } => {
            let selection = match prefix_cache.as_deref_mut() {
                Some(cache) => {
                    let (selection, reused) = select_tokens_reusing(
                        decoder,
                        prompt,
                        filter_layer,
                        top_k,
                        selector,
                        &config.run,
                        cache,
                    )?;
                    reused_tokens = reused;
                    selection
                }
                None => select_tokens(decoder, prompt, filter_layer, top_k, selector, &config.run)?,
            };
            let kept = selection.positions.iter().map(|&p| prompt[p]).collect();
            (kept, Some(selection))
        }
        Method::Preselected(selection) => {
            let count = selection.positions.len();
            selection.validate("preselected", prompt.len(), count)?;
            let kept = selection.positions.iter().map(|&p| prompt[p]).collect();
            (kept, Some(selection.clone()))
        }
        Method::Propagate {
            filter_layer,
            top_k,
            selector,
            ..
        } => {
            // The pass checks the layers the selector reads against every stage.
            let pass = decoder.staged_pass(
                prompt,
                filter_layer,
                top_k,
                selector,
                true,
                true,
                &config.run,
            )?;
            pass.selection
                .validate(selector.name(), prompt.len(), top_k)?;
            let selection = pass.selection.clone();
            let kept = selection.positions.iter().map(|&p| prompt[p]).collect();
            staged = Some(pass);
            (kept, Some(selection))
        }
    };
    timings.select = started.elapsed();

    // The whole prompt is prefilled (full attention, or GemFilter when it kept every token):
    // its KV cache can come from, and go to, the prefix cache.
    let whole_prompt_cached = matches!(method, Method::Full) || selection_skipped;
    let started = Instant::now();
    let (mut cache, logits, compression) = match method {
        Method::KvCompressed(compressor) => {
            check_compressor(decoder, compressor, reduced.len(), config)?;
            let entries = reduced.len().min(compressor.budget());
            let mut cache = decoder.new_cache(entries + config.max_new_tokens);
            let (logits, outcome) =
                decoder.prefill_compressed(&reduced, &mut cache, compressor, &config.run)?;
            (cache, logits, Some(outcome))
        }
        Method::Propagate { early_kv, .. } => {
            let pass = staged.take().expect("the propagation's selection pass ran");
            let room = config.max_new_tokens.min(max_positions - prompt.len());
            let (logits, cache) = decoder.propagate(pass, early_kv, room, &config.run)?;
            (cache, logits, None)
        }
        _ => {
            let capacity = (reduced.len() + config.max_new_tokens).min(max_positions);
            let reuse = match prefix_cache.as_deref_mut() {
                Some(prefixes) if whole_prompt_cached => {
                    prefixes.full_prefix(&reduced, capacity, decoder.rope().embedding())
                }
                _ => None,
            };
            let (mut cache, done) = match reuse {
                Some(found) => (found.state, found.reused),
                None => (decoder.new_cache(capacity), 0),
            };
            reused_tokens = reused_tokens.max(done);
            let logits = decoder.prefill(&reduced[done..], &mut cache, &config.run)?;
            (cache, logits, None)
        }
    };
    let mut sampler = Sampler::new(config.sampling);
    let next = sampler.sample(logits)?;
    timings.prefill = started.elapsed();
    let kv_cache_bytes = cache.bytes();
    let (tokens, finish_reason) = decode_loop(
        decoder,
        &mut cache,
        next,
        &mut sampler,
        config,
        &mut timings,
        on_token,
    )?;
    if whole_prompt_cached && let Some(prefixes) = prefix_cache {
        prefixes.insert_full(&reduced, cache);
    }

    Ok(Generation {
        tokens,
        input_tokens: prompt.len(),
        kept_tokens: reduced.len(),
        selection,
        selection_skipped,
        compression,
        reused_tokens,
        finish_reason,
        timings,
        kv_cache_bytes,
    })
}

/// Checks the settings and the prompt against the model; returns its position limit.
fn check_request(decoder: &Decoder, prompt: &[u32], config: &GenerationConfig) -> Result<usize> {
    config.validate()?;
    if prompt.is_empty() {
        return Err(CoreError::EmptyPrompt);
    }
    let max_positions = decoder.config().max_position_embeddings;
    if prompt.len() > max_positions {
        return Err(CoreError::PromptTooLong {
            needed: prompt.len(),
            max: max_positions,
        });
    }
    Ok(max_positions)
}

/// Checks a KV compressor's parameters, and that a sliding window can mask what it keeps of a
/// `prompt_len`-token prompt and the new tokens.
fn check_compressor(
    decoder: &Decoder,
    compressor: &dyn KvCompressor,
    prompt_len: usize,
    config: &GenerationConfig,
) -> Result<()> {
    compressor.validate()?;
    if let Some(window) = decoder.config().sliding_window
        && prompt_len + config.max_new_tokens > window
        && prompt_len > compressor.budget()
    {
        return Err(CoreError::InvalidParameter(format!(
            "{} keeps non-contiguous positions, which a {window}-token sliding window \
             cannot mask; prompt plus new tokens ({}) exceed the window",
            compressor.name(),
            prompt_len + config.max_new_tokens
        )));
    }
    Ok(())
}

/// Decodes from a prefilled `cache` whose first token `next` was sampled, until EOS, the token
/// budget, the callback or the cache's end; fills `timings.decode`.
fn decode_loop(
    decoder: &Decoder,
    cache: &mut KvCache,
    mut next: u32,
    sampler: &mut Sampler,
    config: &GenerationConfig,
    timings: &mut PhaseTimings,
    on_token: &mut (dyn FnMut(&TokenEvent) -> TokenControl + Send),
) -> Result<(Vec<u32>, FinishReason)> {
    let max_positions = decoder.config().max_position_embeddings;
    let started = Instant::now();
    let mut tokens = Vec::new();
    let finish_reason = loop {
        if tokens.len() >= config.max_new_tokens {
            break FinishReason::MaxNewTokens;
        }
        if config.eos_token_ids.contains(&next) {
            break FinishReason::Eos;
        }
        tokens.push(next);
        timings.decode = started.elapsed();
        let event = TokenEvent {
            token: next,
            generated: tokens.len(),
            timings: *timings,
        };
        if on_token(&event) == TokenControl::Stop {
            break FinishReason::Stopped;
        }
        if tokens.len() >= config.max_new_tokens {
            break FinishReason::MaxNewTokens;
        }
        if cache.room() == 0 || cache.position() >= max_positions {
            break FinishReason::ContextFull;
        }
        let logits = decoder.decode_step(next, cache, &config.run)?;
        next = sampler.sample(logits)?;
    };
    timings.decode = started.elapsed();
    Ok((tokens, finish_reason))
}

/// Answers `prompt` with full attention (when `full`) and with each of `compressors` (SnapKV,
/// H2O, at any budgets) from **one** prefill: the prompt's pass is the same standard-attention
/// computation for all of them, so it runs once and each method keeps its own cache of it
/// ([`Decoder::prefill_shared`]); each then decodes on its own. Returns the full answer first
/// (when asked), then one per compressor in order. Each generation reports the shared prefill
/// as its prefill time. `on_token` sees every branch's tokens, the branch index first.
pub fn generate_shared_prefill(
    decoder: &Decoder,
    prompt: &[u32],
    full: bool,
    compressors: &[&dyn KvCompressor],
    config: &GenerationConfig,
    on_token: &mut (dyn FnMut(usize, &TokenEvent) -> TokenControl + Send),
) -> Result<Vec<Generation>> {
    rayon::scope(|_| {
        let max_positions = check_request(decoder, prompt, config)?;
        for compressor in compressors {
            check_compressor(decoder, *compressor, prompt.len(), config)?;
        }
        let started = Instant::now();
        let capacity = (prompt.len() + config.max_new_tokens).min(max_positions);
        let mut full_cache = full.then(|| decoder.new_cache(capacity));
        let mut caches: Vec<KvCache> = compressors
            .iter()
            .map(|c| decoder.new_cache(prompt.len().min(c.budget()) + config.max_new_tokens))
            .collect();
        let branches = compressors
            .iter()
            .copied()
            .zip(caches.iter_mut())
            .collect::<Vec<_>>();
        let (logits, outcomes) =
            decoder.prefill_shared(prompt, full_cache.as_mut(), branches, &config.run)?;
        let first_logits = logits_to_vec(logits)?;
        let prefill = started.elapsed();

        let mut runs: Vec<(KvCache, Option<CompressionOutcome>)> = Vec::new();
        if let Some(cache) = full_cache {
            runs.push((cache, None));
        }
        runs.extend(caches.into_iter().zip(outcomes.into_iter().map(Some)));
        let mut generations = Vec::with_capacity(runs.len());
        for (branch, (mut cache, compression)) in runs.into_iter().enumerate() {
            // Every branch samples its first token from the same logits; a seeded sampler
            // restarts per branch so that each one draws as a lone run would.
            let mut sampler = Sampler::new(config.sampling);
            let first = sampler.sample_values(&first_logits)?;
            let mut timings = PhaseTimings {
                prefill,
                ..PhaseTimings::default()
            };
            let kv_cache_bytes = cache.bytes();
            let (tokens, finish_reason) = decode_loop(
                decoder,
                &mut cache,
                first,
                &mut sampler,
                config,
                &mut timings,
                &mut |event| on_token(branch, event),
            )?;
            generations.push(Generation {
                tokens,
                input_tokens: prompt.len(),
                kept_tokens: prompt.len(),
                selection: None,
                selection_skipped: false,
                compression,
                reused_tokens: 0,
                finish_reason,
                timings,
                kv_cache_bytes,
            });
        }
        Ok(generations)
    })
}

/// Logits as host values, refusing NaN (broken weights or compute dtype).
fn logits_to_vec(logits: burn::tensor::Tensor<1>) -> Result<Vec<f32>> {
    let logits: Vec<f32> = logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 logits");
    if logits.iter().any(|x| x.is_nan()) {
        return Err(CoreError::InvalidParameter(
            "the model produced NaN logits (check the weights and the compute dtype)".into(),
        ));
    }
    Ok(logits)
}

/// Turns logits into token ids.
struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    fn new(sampling: Sampling) -> Self {
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::TopP { seed, .. } => Some(StdRng::seed_from_u64(seed)),
        };
        Self { sampling, rng }
    }

    fn sample(&mut self, logits: burn::tensor::Tensor<1>) -> Result<u32> {
        self.sample_values(&logits_to_vec(logits)?)
    }

    fn sample_values(&mut self, logits: &[f32]) -> Result<u32> {
        match self.sampling {
            Sampling::Greedy => Ok(argmax(logits) as u32),
            Sampling::TopP {
                temperature, top_p, ..
            } => {
                let rng = self.rng.as_mut().expect("seeded for sampling");
                Ok(sample_top_p(logits, temperature, top_p, rng.random::<f64>()) as u32)
            }
        }
    }
}

/// Index of the largest value, the first one on ties.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Nucleus sampling with a uniform draw `u` in [0, 1).
fn sample_top_p(logits: &[f32], temperature: f32, top_p: f32, u: f64) -> usize {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / temperature as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for (_, p) in &probs {
        mass += p / total;
        kept += 1;
        if mass >= top_p as f64 {
            break;
        }
    }
    let nucleus = &probs[..kept];
    let nucleus_mass: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut target = u * nucleus_mass;
    for &(index, p) in nucleus {
        if target < p {
            return index;
        }
        target -= p;
    }
    nucleus[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_prefers_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn top_p_samples_only_inside_the_nucleus() {
        // Probabilities ≈ [0.665, 0.245, 0.090]: top_p 0.6 keeps only the first token.
        let logits = [2.0, 1.0, 0.0];
        for u in [0.0, 0.5, 0.999] {
            assert_eq!(sample_top_p(&logits, 1.0, 0.6, u), 0);
        }
        // top_p 1.0 keeps all three; a draw near 1 lands on the last.
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.99), 2);
        assert_eq!(sample_top_p(&logits, 1.0, 1.0, 0.1), 0);
    }
}
