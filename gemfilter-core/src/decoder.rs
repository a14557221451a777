//! The decoder-only transformer: a stack of [`DecoderLayer`]s run by short loops — the full
//! forward, chunked prefill and cached decoding here; the early-exit probe in
//! [`probe`](crate::probe); the compressed prefill of the baselines in
//! [`compress`](crate::compress).

use std::ops::Range;

use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use crate::config::DecoderConfig;
use crate::error::{CoreError, Result};
use crate::hook::{LayerHook, NoHook};
use crate::kv::{KvCache, KvStore, NoCache};
use crate::nn::{
    AttentionKernel, DecoderLayer, LayerContext, LayerOutput, Projection, RmsNorm, RopeCache,
    RopeTables, TokenEmbedding,
};
use crate::options::{ForwardProgress, RunOptions};
use crate::profile::timed;

/// The parameters of a decoder, laid out as Hugging Face names them (without the `model.`
/// prefix): `embed_tokens`, `layers.N.…`, `norm`, `lm_head`.
#[derive(Module, Debug)]
pub struct DecoderWeights {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: TokenEmbedding,
    /// The decoder layers in order.
    pub layers: Vec<DecoderLayer>,
    /// Final norm before the LM head.
    pub norm: RmsNorm,
    /// Output projection; `None` when tied to `embed_tokens`.
    pub lm_head: Option<Projection>,
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
    /// The projection at `path`: `layers.N.self_attn.{q,k,v,o}_proj`,
    /// `layers.N.mlp.{gate,up,down}_proj` or `lm_head` (untied models).
    pub fn projection_mut(&mut self, path: &str) -> Result<&mut Projection> {
        let unknown = || CoreError::InvalidParameter(format!("no projection at `{path}`"));
        if path == "lm_head" {
            return self.lm_head.as_mut().ok_or_else(unknown);
        }
        let rest = path.strip_prefix("layers.").ok_or_else(unknown)?;
        let (index, name) = rest.split_once('.').ok_or_else(unknown)?;
        let index: usize = index.parse().map_err(|_| unknown())?;
        let layer = self.layers.get_mut(index).ok_or_else(unknown)?;
        Ok(match name {
            "self_attn.q_proj" => &mut layer.self_attn.q_proj,
            "self_attn.k_proj" => &mut layer.self_attn.k_proj,
            "self_attn.v_proj" => &mut layer.self_attn.v_proj,
            "self_attn.o_proj" => &mut layer.self_attn.o_proj,
            "mlp.gate_proj" => &mut layer.mlp.gate_proj,
            "mlp.up_proj" => &mut layer.mlp.up_proj,
            "mlp.down_proj" => &mut layer.mlp.down_proj,
            _ => return Err(unknown()),
        })
    }

    /// The same weights with every packed parameter dequantised to the compute dtype: the
    /// arithmetic the packed blocks stand for, to measure the packed kernels against.
    pub fn dequantized(&self, device: &Device) -> Self {
        let dtype = self.embed_tokens.dtype();
        let dense = |p: &Projection| p.dequantized(dtype, device);
        Self {
            embed_tokens: self.embed_tokens.dequantized(device),
            layers: self
                .layers
                .iter()
                .map(|layer| {
                    let mut layer = layer.clone();
                    for projection in [
                        &mut layer.self_attn.q_proj,
                        &mut layer.self_attn.k_proj,
                        &mut layer.self_attn.v_proj,
                        &mut layer.self_attn.o_proj,
                        &mut layer.mlp.gate_proj,
                        &mut layer.mlp.up_proj,
                        &mut layer.mlp.down_proj,
                    ] {
                        *projection = dense(projection);
                    }
                    layer
                })
                .collect(),
            norm: self.norm.clone(),
            lm_head: self.lm_head.as_ref().map(dense),
        }
    }

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
            embed_tokens: TokenEmbedding::dense(config.vocab_size, config.hidden_size, device),
            layers: (0..config.num_layers)
                .map(|_| DecoderLayer::new(config, device))
                .collect(),
            norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| Projection::dense(config.hidden_size, config.vocab_size, false, device)),
        }
    }
}

/// Where a pass ended: the hidden state entering `next_layer` (`[1, positions, hidden]`). When
/// every layer asked for ran, `next_layer` is the end of that range; a hook that stopped the pass
/// leaves it at the layer it stopped.
#[derive(Debug, Clone)]
pub struct Pass {
    /// Hidden state entering `next_layer`.
    pub hidden: Tensor<3>,
    /// The first layer that did not run.
    pub next_layer: usize,
}

/// A decoder-only transformer bound to one device.
///
/// The same code serves every Burn backend: the backend is whatever `Device` the weights live
/// on. A decoder never changes after it is built (per-call settings come in [`RunOptions`]), so
/// it can be shared behind an `Arc` and used from several threads at once.
#[derive(Debug)]
pub struct Decoder {
    weights: DecoderWeights,
    config: DecoderConfig,
    rope: RopeCache,
    device: Device,
}

/// A decoder is shared across threads (a server's requests) as it is.
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Decoder>();
};

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
            rope: RopeCache::new(&config.rope, config.max_position_embeddings, device),
            weights,
            config,
            device: device.clone(),
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
        self.weights.embed_tokens.dtype()
    }

    /// This decoder with every packed weight dequantised (see [`DecoderWeights::dequantized`]).
    pub fn dequantized(&self) -> Decoder {
        Decoder::from_parts(
            self.config.clone(),
            self.weights.dequantized(&self.device),
            &self.device,
        )
    }

    /// The rotary tables, computed once per model and sliced per pass.
    pub fn rope(&self) -> &RopeCache {
        &self.rope
    }

    /// The attention kernel a pass with `options` uses.
    pub fn attention_kernel(&self, options: &RunOptions) -> AttentionKernel {
        AttentionKernel {
            window: self.config.sliding_window,
            max_scores_per_block: options.max_scores_per_block.max(1),
            fused: options.fused_attention,
            profile: options.profile.clone(),
        }
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

    /// The embeddings of `ids` (`[1, n, hidden]`) placed after `start` earlier positions;
    /// fails on an empty prompt, ids outside the vocabulary or positions past the model's range.
    pub fn embed(&self, ids: &[u32], start: usize) -> Result<Tensor<3>> {
        self.check_ids(ids, start)?;
        Ok(self.weights.embed_tokens.lookup(ids, &self.device))
    }

    /// [`embed`](Self::embed), timed as profile section `embedding`.
    fn embed_timed(&self, ids: &[u32], start: usize, options: &RunOptions) -> Result<Tensor<3>> {
        timed(
            options.profile.as_deref(),
            "embedding",
            &self.device,
            || self.embed(ids, start),
        )
    }

    /// Runs the decoder layers `layers` over `hidden` (`[1, positions, hidden]`, rotated with
    /// `rope`), each through `kv` and shown to `hook`, which may stop the pass. Nothing is
    /// committed to `kv`: the caller does that once the pass is complete.
    pub fn run_layers(
        &self,
        mut hidden: Tensor<3>,
        rope: &RopeTables,
        layers: Range<usize>,
        kv: &mut dyn KvStore,
        hook: &mut dyn LayerHook,
        options: &RunOptions,
    ) -> Result<Pass> {
        let kernel = self.attention_kernel(options);
        let positions = hidden.dims()[1];
        let (first, layers_total) = (layers.start, layers.len());
        for index in layers.clone() {
            options.check_cancelled()?;
            let layer = self
                .weights
                .layers
                .get(index)
                .ok_or(CoreError::FilterLayerOutOfRange {
                    layer: index,
                    num_layers: self.config.num_layers,
                })?;
            let context = LayerContext {
                index,
                rope,
                kernel: &kernel,
            };
            hidden = match layer.forward(hidden, context, kv, hook)? {
                LayerOutput::Hidden(output) => output,
                LayerOutput::Stopped(input) => {
                    return Ok(Pass {
                        hidden: input,
                        next_layer: index,
                    });
                }
            };
            options.report(ForwardProgress {
                layers_done: index + 1 - first,
                layers_total,
                positions,
            });
        }
        Ok(Pass {
            hidden,
            next_layer: layers.end,
        })
    }

    /// Runs `ids` (placed after what `kv` holds) through the first `layers` layers and commits
    /// them to `kv`.
    pub fn forward(
        &self,
        ids: &[u32],
        layers: usize,
        kv: &mut dyn KvStore,
        hook: &mut dyn LayerHook,
        options: &RunOptions,
    ) -> Result<Pass> {
        let start = kv.position();
        kv.check_room(ids.len())?;
        let hidden = self.embed_timed(ids, start, options)?;
        let rope = self.rope.tables(start, ids.len(), self.dtype());
        let pass = self.run_layers(hidden, &rope, 0..layers, kv, hook, options)?;
        kv.commit(ids.len());
        Ok(pass)
    }

    /// Logits of the last position of `hidden` (`[1, positions, hidden]`, after the last layer),
    /// `[vocab]`: final norm, then the LM head on that position only.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<1> {
        let n = hidden.dims()[1];
        let last = self.weights.norm.forward(hidden.narrow(1, n - 1, 1));
        let vocab = self.config.vocab_size;
        match &self.weights.lm_head {
            Some(head) => head.forward(last).reshape([vocab]),
            None => self.weights.embed_tokens.tied_logits(last),
        }
    }

    /// [`logits`](Self::logits), timed as profile section `lm head`.
    fn logits_timed(&self, hidden: Tensor<3>, options: &RunOptions) -> Tensor<1> {
        timed(options.profile.as_deref(), "lm head", &self.device, || {
            self.logits(hidden)
        })
    }

    /// Runs `ids` (appended after what `cache` holds) through every layer and returns the
    /// logits of the last position, `[vocab]`; in chunks when `options.prefill_chunk` says so.
    pub fn prefill(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        options: &RunOptions,
    ) -> Result<Tensor<1>> {
        // Check the whole prompt first so a failure leaves the cache untouched.
        self.check_ids(ids, cache.position())?;
        cache.check_room(ids.len())?;
        let chunk = options.prefill_chunk.unwrap_or(usize::MAX).max(1);
        let last_start = (ids.len() - 1) / chunk * chunk;
        let layers = self.config.num_layers;
        for part in ids[..last_start].chunks(chunk) {
            self.forward(part, layers, cache, &mut NoHook, options)?;
        }
        let pass = self.forward(&ids[last_start..], layers, cache, &mut NoHook, options)?;
        Ok(self.logits_timed(pass.hidden, options))
    }

    /// Feeds one token through the cached decoder and returns the next-token logits.
    ///
    /// On CPU devices, call a loop of these from a rayon worker (inside `rayon::scope`, as
    /// [`generate`](crate::generate::generate) does): the step's many small parallel products
    /// then cost no thread hand-offs.
    pub fn decode_step(
        &self,
        id: u32,
        cache: &mut KvCache,
        options: &RunOptions,
    ) -> Result<Tensor<1>> {
        self.prefill(&[id], cache, options)
    }

    /// Logits of the last position of `ids` without keeping a cache.
    pub fn last_logits(&self, ids: &[u32], options: &RunOptions) -> Result<Tensor<1>> {
        let layers = self.config.num_layers;
        let pass = self.forward(ids, layers, &mut NoCache, &mut NoHook, options)?;
        Ok(self.logits_timed(pass.hidden, options))
    }

    pub(crate) fn check_ids(&self, ids: &[u32], start: usize) -> Result<()> {
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
}
