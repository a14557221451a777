//! The decoder-only transformer: full forward, cached decoding and the early-exit probe.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::compress::{CompressionOutcome, KvCompressor, LayerState, gather_kept, kept_positions};
use crate::config::DecoderConfig;
use crate::error::{CoreError, Result};
use crate::nn::{AttentionSpan, DecoderLayer, RmsNorm, RotaryEmbedding};
use crate::probe::{LayerObserver, Probe};

/// Default bound on attention scores held at once (elements; 32 Mi × 4 bytes = 128 MiB in f32).
pub const DEFAULT_MAX_SCORES_PER_BLOCK: usize = 32 << 20;

/// The parameters of a decoder, laid out as Hugging Face names them (without the `model.`
/// prefix): `embed_tokens`, `layers.N.…`, `norm`, `lm_head`.
#[derive(Module, Debug)]
pub struct DecoderWeights {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// The decoder layers in order.
    pub layers: Vec<DecoderLayer>,
    /// Final norm before the LM head.
    pub norm: RmsNorm,
    /// Output projection; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Linear>,
}

/// Casts every float parameter to one dtype, lazily for parameters not yet initialised.
struct CastFloats(DType);

impl burn::module::ModuleMapper for CastFloats {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        let dtype = self.0;
        param.init_mapper(move |tensor| tensor.cast(dtype))
    }
}

impl DecoderWeights {
    /// The same weights in `dtype` (f32, f16 or bf16). Uninitialised parameters stay lazy and
    /// are cast when they materialise.
    pub fn cast(self, dtype: DType) -> Self {
        self.map(&mut CastFloats(dtype))
    }

    /// Parameters shaped by `config`. They are initialised lazily: a loader replaces them
    /// before first use; untouched ones materialise with Burn's random initialisers (useful for
    /// benchmarks on random weights).
    pub fn new(config: &DecoderConfig, device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(config.vocab_size, config.hidden_size).init(device),
            layers: (0..config.num_layers)
                .map(|_| DecoderLayer::new(config, device))
                .collect(),
            norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings).then(|| {
                LinearConfig::new(config.hidden_size, config.vocab_size)
                    .with_bias(false)
                    .init(device)
            }),
        }
    }
}

/// Where a forward pass stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopAt {
    /// Run every layer, the final norm and the LM head (last position only).
    Logits,
    /// Early exit: layers before this one run fully; this one computes only its probe.
    Probe(usize),
}

/// Progress of a forward pass, reported after each layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardProgress {
    /// Layers finished in this pass.
    pub layers_done: usize,
    /// Layers this pass runs (fewer than the model has for an early exit).
    pub layers_total: usize,
    /// Positions processed by each layer of this pass.
    pub positions: usize,
}

/// Callback receiving [`ForwardProgress`] (e.g. to drive a progress bar).
#[derive(Clone)]
pub struct ProgressHook(pub std::sync::Arc<dyn Fn(ForwardProgress) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// A decoder-only transformer bound to one device.
///
/// The same code serves every Burn backend: the backend is whatever `Device` the weights live
/// on.
#[derive(Debug)]
pub struct Decoder {
    weights: DecoderWeights,
    config: DecoderConfig,
    rope: RotaryEmbedding,
    device: Device,
    max_scores_per_block: usize,
    fused_attention: bool,
    prefill_chunk: Option<usize>,
    selection_chunk: Option<usize>,
    progress: Option<ProgressHook>,
}

impl Decoder {
    /// A decoder with lazily initialised weights; load real ones with [`Decoder::weights_mut`].
    pub fn new(config: DecoderConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let weights = DecoderWeights::new(&config, device);
        Ok(Self::from_parts(config, weights, device))
    }

    /// A decoder with random weights (Burn's initialisers) in `dtype`, for benchmarks of model
    /// shapes whose checkpoints are not at hand. Weights materialise on first use.
    pub fn random(config: DecoderConfig, device: &Device, dtype: DType) -> Result<Self> {
        config.validate()?;
        let weights = DecoderWeights::new(&config, device).cast(dtype);
        Ok(Self::from_parts(config, weights, device))
    }

    /// Assembles a decoder from weights built elsewhere.
    pub fn from_parts(config: DecoderConfig, weights: DecoderWeights, device: &Device) -> Self {
        Self {
            rope: RotaryEmbedding::new(&config.rope),
            weights,
            config,
            device: device.clone(),
            max_scores_per_block: DEFAULT_MAX_SCORES_PER_BLOCK,
            fused_attention: true,
            prefill_chunk: None,
            selection_chunk: None,
            progress: None,
        }
    }

    /// The architecture description.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The device every tensor of this decoder lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameters.
    pub fn weights(&self) -> &DecoderWeights {
        &self.weights
    }

    /// The parameters, for loaders.
    pub fn weights_mut(&mut self) -> &mut DecoderWeights {
        &mut self.weights
    }

    /// Floating-point type of the activations (that of the embedding).
    pub fn dtype(&self) -> DType {
        self.weights.embed_tokens.weight.val().dtype()
    }

    /// Bounds the attention scores materialised at once (elements, all heads together);
    /// smaller values lower peak memory on long prompts at some speed cost.
    pub fn set_max_scores_per_block(&mut self, elements: usize) {
        self.max_scores_per_block = elements.max(1);
    }

    /// Whether to use the backend's fused attention op where it applies (default: yes); the
    /// blocked implementation with explicit masks is used otherwise and for sliding windows.
    pub fn set_fused_attention(&mut self, fused: bool) {
        self.fused_attention = fused;
    }

    /// Prefill prompts in chunks of at most `tokens` positions through the KV cache (`None`,
    /// the default: one chunk). Chunks bound the activations (the MLP's `positions ×
    /// intermediate` tensors above all) at the price of more, smaller matrix products; the logits
    /// are the same.
    pub fn set_prefill_chunk(&mut self, tokens: Option<usize>) {
        self.prefill_chunk = tokens.map(|t| t.max(1));
    }

    /// Run the selection pass ([`observe`](Self::observe), [`probe`](Self::probe)) in chunks of at
    /// most `tokens` positions (`None`, the default: one pass). It needs a temporary KV cache for
    /// the layers below the filter layer, so it only lowers peak memory when the activations it
    /// bounds outweigh that cache (wide MLPs, long prompts); the probes are the same.
    pub fn set_selection_chunk(&mut self, tokens: Option<usize>) {
        self.selection_chunk = tokens.map(|t| t.max(1));
    }

    /// Calls `hook` after every layer of every forward pass (`None` removes it).
    pub fn set_progress_hook(&mut self, hook: Option<ProgressHook>) {
        self.progress = hook;
    }

    /// An empty KV cache able to hold `capacity` positions.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(
            self.config.num_layers,
            self.config.head_dim,
            capacity,
            self.dtype(),
            &self.device,
        )
    }

    /// Runs `ids` (appended after what `cache` holds) through every layer and returns the
    /// logits of the last position, `[vocab]`.
    pub fn prefill(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor<1>> {
        let chunk = self.prefill_chunk.unwrap_or(usize::MAX).max(1);
        if ids.len() > chunk {
            // Check the whole prompt first so a failure leaves the cache untouched.
            self.check_ids(ids, cache.position())?;
            cache.check_room(ids.len())?;
            let mut logits = None;
            for part in ids.chunks(chunk) {
                logits = self.forward(part, Some(cache), StopAt::Logits, None, None)?;
            }
            return Ok(logits.expect("at least one chunk returns logits"));
        }
        let logits = self.forward(ids, Some(cache), StopAt::Logits, None, None)?;
        Ok(logits.expect("a full forward returns logits"))
    }

    /// Runs the whole prompt `ids` through every layer with standard attention into an empty
    /// `cache`, storing per layer only the entries `compressor` keeps (SnapKV, H2O). Returns the
    /// last position's logits and what was kept. Later tokens continue at rotary position
    /// `ids.len()`. The prompt runs in one pass (the scores need every key at once), whatever
    /// [`set_prefill_chunk`](Self::set_prefill_chunk) says. Sliding-window models are refused
    /// when the prompt exceeds both the window and the budget: kept entries no longer sit at
    /// contiguous positions.
    pub fn prefill_compressed(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        compressor: &dyn KvCompressor,
    ) -> Result<(Tensor<1>, CompressionOutcome)> {
        compressor.validate()?;
        if !cache.is_empty() {
            return Err(CoreError::InvalidParameter(
                "KV compression starts from an empty cache (a fresh prompt)".into(),
            ));
        }
        // Entries dropped from a prompt longer than the window leave gaps the window mask
        // cannot express; a prompt within the budget is cached whole and stays exact.
        if let Some(window) = self.config.sliding_window
            && ids.len() > window
            && ids.len() > compressor.budget()
        {
            return Err(CoreError::InvalidParameter(format!(
                "{} cannot compress a {}-token prompt on a model with a {window}-token sliding window",
                compressor.name(),
                ids.len()
            )));
        }
        let mut outcome = CompressionOutcome {
            prompt_positions: ids.len(),
            entries: ids.len().min(compressor.budget()),
            heads: 0,
            kept: Vec::new(),
        };
        let logits = self.forward(
            ids,
            Some(cache),
            StopAt::Logits,
            None,
            Some((compressor, &mut outcome)),
        )?;
        Ok((logits.expect("a full forward returns logits"), outcome))
    }

    /// Feeds one token through the cached decoder and returns the next-token logits.
    pub fn decode_step(&self, id: u32, cache: &mut KvCache) -> Result<Tensor<1>> {
        self.prefill(&[id], cache)
    }

    /// Logits of the last position of `ids` without keeping a cache.
    pub fn last_logits(&self, ids: &[u32]) -> Result<Tensor<1>> {
        let logits = self.forward(ids, None, StopAt::Logits, None, None)?;
        Ok(logits.expect("a full forward returns logits"))
    }

    /// The early-exit hook: layers `0..layer` run fully over `ids`; at `layer` only the normed
    /// input, the post-RoPE queries of the last `query_window` positions and the post-RoPE keys of
    /// all positions are computed; nothing after that runs.
    pub fn probe(&self, ids: &[u32], layer: usize, query_window: usize) -> Result<Probe> {
        struct Capture(Option<Probe>);
        impl LayerObserver for Capture {
            fn wants(&self, _layer: usize) -> bool {
                false
            }
            fn observe(&mut self, probe: Probe) {
                self.0 = Some(probe);
            }
        }
        let mut capture = Capture(None);
        self.observe(ids, layer, query_window, &mut capture)?;
        Ok(capture.0.expect("the stop layer is always observed"))
    }

    /// Probes of several `layers` (ascending, deduplicated) from one pass that stops at the
    /// highest of them: every layer below it runs fully once, the highest as a probe only.
    pub fn probe_layers(
        &self,
        ids: &[u32],
        layers: &[usize],
        query_window: usize,
    ) -> Result<Vec<Probe>> {
        struct Capture<'a> {
            layers: &'a [usize],
            probes: Vec<Probe>,
        }
        impl LayerObserver for Capture<'_> {
            fn wants(&self, layer: usize) -> bool {
                self.layers.contains(&layer)
            }
            fn observe(&mut self, probe: Probe) {
                self.probes.push(probe);
            }
        }
        let mut layers = layers.to_vec();
        layers.sort_unstable();
        layers.dedup();
        let Some(&stop) = layers.last() else {
            return Err(CoreError::InvalidParameter(
                "no layer to probe: the selector asked for none".into(),
            ));
        };
        let mut capture = Capture {
            layers: &layers,
            probes: Vec::with_capacity(layers.len()),
        };
        self.observe(ids, stop, query_window, &mut capture)?;
        capture.probes.sort_by_key(|p| p.layer);
        Ok(capture.probes)
    }

    /// Runs layers `0..stop_layer` fully and `stop_layer` as a probe only, handing `observer`
    /// the probe of every layer it wants (and always of `stop_layer`). One pass serves
    /// selectors that look at several layers.
    pub fn observe(
        &self,
        ids: &[u32],
        stop_layer: usize,
        query_window: usize,
        observer: &mut dyn LayerObserver,
    ) -> Result<()> {
        if stop_layer >= self.config.num_layers {
            return Err(CoreError::FilterLayerOutOfRange {
                layer: stop_layer,
                num_layers: self.config.num_layers,
            });
        }
        if query_window == 0 {
            return Err(CoreError::InvalidParameter(
                "the probe's query window must hold at least one position".into(),
            ));
        }
        let chunk = self.selection_chunk.unwrap_or(usize::MAX).max(query_window);
        if ids.len() <= chunk {
            self.forward(
                ids,
                None,
                StopAt::Probe(stop_layer),
                Some((observer, query_window)),
                None,
            )?;
            return Ok(());
        }
        self.observe_chunked(ids, stop_layer, query_window, chunk, observer)
    }

    /// The selection pass in chunks (see [`set_selection_chunk`](Self::set_selection_chunk)): layers
    /// `0..stop_layer` run chunk by chunk through a temporary cache, the keys of every observed
    /// layer are gathered across chunks, and the queries come from the last chunk, which holds at
    /// least `query_window` positions. The observer then sees the probes one pass would give.
    fn observe_chunked(
        &self,
        ids: &[u32],
        stop_layer: usize,
        query_window: usize,
        chunk: usize,
        observer: &mut dyn LayerObserver,
    ) -> Result<()> {
        self.check_ids(ids, 0)?;
        struct Gather<'a> {
            inner: &'a dyn LayerObserver,
            keys: Vec<(usize, Vec<Tensor<3>>)>,
            queries: Vec<(usize, Tensor<3>)>,
        }
        impl LayerObserver for Gather<'_> {
            fn wants(&self, layer: usize) -> bool {
                self.inner.wants(layer)
            }
            fn observe(&mut self, probe: Probe) {
                match self.keys.iter_mut().find(|(l, _)| *l == probe.layer) {
                    Some((_, keys)) => keys.push(probe.keys),
                    None => self.keys.push((probe.layer, vec![probe.keys])),
                }
                self.queries.retain(|(l, _)| *l != probe.layer);
                self.queries.push((probe.layer, probe.queries));
            }
        }
        // Chunk boundaries, the last chunk at least `query_window` long.
        let mut bounds: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let mut end = (start + chunk).min(ids.len());
            if ids.len() - end < query_window && end < ids.len() {
                end = ids.len();
            }
            bounds.push((start, end));
            start = end;
        }
        let mut cache = KvCache::new(
            stop_layer,
            self.config.head_dim,
            ids.len(),
            self.dtype(),
            &self.device,
        );
        let mut gather = Gather {
            inner: &*observer,
            keys: Vec::new(),
            queries: Vec::new(),
        };
        for &(start, end) in &bounds {
            let window = query_window.min(end - start);
            self.forward(
                &ids[start..end],
                Some(&mut cache),
                StopAt::Probe(stop_layer),
                Some((&mut gather, window)),
                None,
            )?;
            cache.advance(end - start);
        }
        let Gather { keys, queries, .. } = gather;
        let mut probes: Vec<Probe> = keys
            .into_iter()
            .map(|(layer, parts)| {
                let queries = queries
                    .iter()
                    .find(|(l, _)| *l == layer)
                    .map(|(_, q)| q.clone())
                    .expect("every observed layer has queries");
                Probe::new(layer, queries, Tensor::cat(parts, 1))
            })
            .collect();
        probes.sort_by_key(|p| p.layer);
        for probe in probes {
            observer.observe(probe);
        }
        Ok(())
    }

    fn check_ids(&self, ids: &[u32], start: usize) -> Result<()> {
        if ids.is_empty() {
            return Err(CoreError::EmptyPrompt);
        }
        let needed = start + ids.len();
        if needed > self.config.max_position_embeddings {
            return Err(CoreError::PromptTooLong {
                needed,
                max: self.config.max_position_embeddings,
            });
        }
        if let Some(&id) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(CoreError::TokenOutOfVocabulary {
                id,
                vocab_size: self.config.vocab_size,
            });
        }
        Ok(())
    }

    fn forward(
        &self,
        ids: &[u32],
        mut cache: Option<&mut KvCache>,
        stop: StopAt,
        mut observer: Option<(&mut dyn LayerObserver, usize)>,
        mut compression: Option<(&dyn KvCompressor, &mut CompressionOutcome)>,
    ) -> Result<Option<Tensor<1>>> {
        let start = cache.as_ref().map_or(0, |c| c.position());
        self.check_ids(ids, start)?;
        if let Some(cache) = cache.as_ref() {
            let entries = compression
                .as_ref()
                .map_or(ids.len(), |(_, outcome)| outcome.entries);
            cache.check_room(entries)?;
        }
        let n = ids.len();
        let dtype = self.dtype();
        let tokens: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(tokens, [1, n]), &self.device);
        let mut hidden = self.weights.embed_tokens.forward(tokens);
        let rope = self.rope.tables(start, n, dtype, &self.device);
        let layers_total = match stop {
            StopAt::Logits => self.config.num_layers,
            StopAt::Probe(layer) => layer + 1,
        };
        let report = |layers_done: usize| {
            if let Some(hook) = &self.progress {
                (hook.0)(ForwardProgress {
                    layers_done,
                    layers_total,
                    positions: n,
                });
            }
        };

        for (index, layer) in self.weights.layers.iter().enumerate() {
            let attention = &layer.self_attn;
            let normed = layer.input_layernorm.forward(hidden.clone());
            let keys = attention.keys(normed.clone(), &rope);

            let stop_here = stop == StopAt::Probe(index);
            if let Some((observer, window)) = observer.as_mut()
                && (stop_here || observer.wants(index))
            {
                let window = (*window).min(n);
                let tail = rope.narrow(n - window, window);
                let queries =
                    attention.queries(normed.clone().narrow(1, n - window, window), &tail);
                observer.observe(Probe::new(
                    index,
                    queries.squeeze_dim(0),
                    keys.clone().squeeze_dim(0),
                ));
            }
            if stop_here {
                report(index + 1);
                return Ok(None);
            }

            let queries = attention.queries(normed.clone(), &rope);
            let values = attention.values(normed);
            let span = AttentionSpan {
                query_start: start,
                key_start: start,
                window: self.config.sliding_window,
                max_scores_per_block: self.max_scores_per_block,
                fused: self.fused_attention,
            };
            if let Some((compressor, outcome)) = compression.as_mut() {
                let cache = cache.as_mut().expect("compression writes into a cache");
                let (output, column_sums) = if compressor.needs_column_sums() {
                    let (output, sums) = attention.attend_with_column_sums(
                        queries.clone(),
                        keys.clone(),
                        values.clone(),
                        span,
                    );
                    (output, Some(sums))
                } else {
                    let output =
                        attention.attend(queries.clone(), keys.clone(), values.clone(), span);
                    (output, None)
                };
                hidden = hidden + output;
                if n > compressor.budget() {
                    let scores = compressor.scores(&LayerState {
                        layer: index,
                        queries: &queries,
                        keys: &keys,
                        column_sums: column_sums.as_ref(),
                    })?;
                    let kept = kept_positions(&scores, n, compressor.budget(), compressor.recent());
                    cache.store_compressed(
                        index,
                        gather_kept(keys, &kept),
                        gather_kept(values, &kept),
                    )?;
                    outcome.heads = kept.len();
                    outcome.kept.push(kept);
                } else {
                    outcome.heads = keys.dims()[1];
                    cache.store_compressed(index, keys, values)?;
                }
            } else {
                let (keys, values, key_start) = match cache.as_mut() {
                    // Cached entries stand for the positions just before `start` (a compressed
                    // cache holds fewer entries than positions; every entry stays visible).
                    Some(cache) => {
                        let key_start = start - cache.len();
                        let (keys, values) = cache.append(index, keys, values)?;
                        (keys, values, key_start)
                    }
                    None => (keys, values, start),
                };
                let span = AttentionSpan { key_start, ..span };
                hidden = hidden + attention.attend(queries, keys, values, span);
            }
            let mlp_in = layer.post_attention_layernorm.forward(hidden.clone());
            hidden = hidden + layer.mlp.forward(mlp_in);
            report(index + 1);
        }
        if let Some(cache) = cache {
            match &compression {
                Some((_, outcome)) => cache.finish_compression(outcome.entries, n),
                None => cache.advance(n),
            }
        }

        let last = self.weights.norm.forward(hidden.narrow(1, n - 1, 1));
        let logits = match &self.weights.lm_head {
            Some(head) => head.forward(last).reshape([self.config.vocab_size]),
            // Tied head: E·hᵀ reads the [vocab, hidden] embedding as stored; h·Eᵀ would make
            // backends materialise the transpose of the whole embedding on every call.
            None => {
                let hidden = last.reshape([self.config.hidden_size, 1]);
                self.weights
                    .embed_tokens
                    .weight
                    .val()
                    .matmul(hidden)
                    .reshape([self.config.vocab_size])
            }
        };
        Ok(Some(logits))
    }
}
