//! The compressing KV store: a layer's attention runs over the whole prompt, then only the
//! entries the compressor keeps are cached.

use burn::tensor::Tensor;

use super::{CompressionOutcome, KvCompressor, LayerState, gather_kept, kept_positions};
use crate::decoder::Decoder;
use crate::error::{CoreError, Result};
use crate::hook::NoHook;
use crate::kv::{KvCache, KvStore};
use crate::nn::{AttentionKernel, Qkv};
use crate::options::RunOptions;

/// A [`KvStore`] for a prompt's one pass from an empty cache: every layer attends over the whole
/// prompt with standard attention, then `compressor` scores the earlier positions and only the
/// kept entries (per layer and head) reach `cache`.
pub struct CompressingStore<'a> {
    cache: &'a mut KvCache,
    compressor: &'a dyn KvCompressor,
    outcome: CompressionOutcome,
}

impl<'a> CompressingStore<'a> {
    /// A store filling the empty `cache` with what `compressor` keeps of a `prompt_positions`
    /// long prompt.
    pub fn new(
        cache: &'a mut KvCache,
        compressor: &'a dyn KvCompressor,
        prompt_positions: usize,
    ) -> Result<Self> {
        compressor.validate()?;
        if !cache.is_empty() {
            return Err(CoreError::InvalidParameter(
                "KV compression starts from an empty cache (a fresh prompt)".into(),
            ));
        }
        Ok(Self {
            cache,
            compressor,
            outcome: CompressionOutcome {
                prompt_positions,
                entries: prompt_positions.min(compressor.budget()),
                heads: 0,
                kept: Vec::new(),
            },
        })
    }

    /// What was kept, once the pass ran.
    pub fn outcome(self) -> CompressionOutcome {
        self.outcome
    }
}

impl KvStore for CompressingStore<'_> {
    fn position(&self) -> usize {
        self.cache.position()
    }

    fn check_room(&self, new_positions: usize) -> Result<()> {
        self.cache
            .check_room(new_positions.min(self.compressor.budget()))
    }

    fn attend(&mut self, layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>> {
        let n = qkv.keys.dims()[2];
        let (queries, keys, values) = (qkv.queries.clone(), qkv.keys.clone(), qkv.values.clone());
        let (context, column_sums) = if self.compressor.needs_column_sums() {
            let (context, sums) = kernel.attend_with_column_sums(qkv, 0, 0);
            (context, Some(sums))
        } else {
            (kernel.attend(qkv, 0, 0), None)
        };
        if n > self.compressor.budget() {
            let scores = self.compressor.scores(&LayerState {
                layer,
                queries: &queries,
                keys: &keys,
                column_sums: column_sums.as_ref(),
            })?;
            let kept = kept_positions(
                &scores,
                n,
                self.compressor.budget(),
                self.compressor.recent(),
            );
            self.cache.store_compressed(
                layer,
                gather_kept(keys, &kept),
                gather_kept(values, &kept),
            )?;
            self.outcome.heads = kept.len();
            self.outcome.kept.push(kept);
        } else {
            self.outcome.heads = keys.dims()[1];
            self.cache.store_compressed(layer, keys, values)?;
        }
        Ok(context)
    }

    fn commit(&mut self, new_positions: usize) {
        self.cache
            .finish_compression(self.outcome.entries, new_positions);
    }
}

impl Decoder {
    /// Runs the whole prompt `ids` through every layer with standard attention into an empty
    /// `cache`, storing per layer only the entries `compressor` keeps (SnapKV, H2O). Returns the
    /// last position's logits and what was kept. Later tokens continue at rotary position
    /// `ids.len()`. The prompt runs in one pass (the scores need every key at once), whatever
    /// `options.prefill_chunk` says. Sliding-window models are refused when the prompt exceeds
    /// both the window and the budget: kept entries no longer sit at contiguous positions.
    pub fn prefill_compressed(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
        compressor: &dyn KvCompressor,
        options: &RunOptions,
    ) -> Result<(Tensor<1>, CompressionOutcome)> {
        let mut store = CompressingStore::new(cache, compressor, ids.len())?;
        // Entries dropped from a prompt longer than the window leave gaps the window mask
        // cannot express; a prompt within the budget is cached whole and stays exact.
        if let Some(window) = self.config().sliding_window
            && ids.len() > window
            && ids.len() > compressor.budget()
        {
            return Err(CoreError::InvalidParameter(format!(
                "{} cannot compress a {}-token prompt on a model with a {window}-token sliding window",
                compressor.name(),
                ids.len()
            )));
        }
        let layers = self.config().num_layers;
        let pass = self.forward(ids, layers, &mut store, &mut NoHook, options)?;
        Ok((self.logits(pass.hidden), store.outcome()))
    }
}
