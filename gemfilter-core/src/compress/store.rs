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

    /// Scores one layer's entries (after its attention ran over the whole prompt) and stores
    /// the kept ones.
    fn keep(
        &mut self,
        layer: usize,
        queries: &Tensor<4>,
        keys: Tensor<4>,
        values: Tensor<4>,
        column_sums: Option<&Tensor<3>>,
    ) -> Result<()> {
        let n = keys.dims()[2];
        if n > self.compressor.budget() {
            let scores = self.compressor.scores(&LayerState {
                layer,
                queries,
                keys: &keys,
                column_sums,
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
        Ok(())
    }
}

/// Standard attention of a whole prompt, with the per-key column sums of the softmax when
/// `column_sums` (H2O's score; it forces the blocked path).
fn attend_whole(
    kernel: &AttentionKernel,
    qkv: Qkv,
    column_sums: bool,
) -> (Tensor<4>, Option<Tensor<3>>) {
    if column_sums {
        let (context, sums) = kernel.attend_with_column_sums(qkv, 0, 0);
        (context, Some(sums))
    } else {
        (kernel.attend(qkv, 0, 0), None)
    }
}

/// A [`KvStore`] serving several methods from one prompt pass: every layer attends over the
/// whole prompt once (standard attention), the full keys and values go to an optional plain
/// cache, and each [`CompressingStore`] keeps its own entries. Full attention, SnapKV and H2O
/// answers then decode from their own caches without repeating the prefill: the pass is the
/// same computation for all of them (only what is cached differs).
pub struct SharedPrefillStore<'a> {
    full: Option<&'a mut KvCache>,
    branches: Vec<CompressingStore<'a>>,
}

impl<'a> SharedPrefillStore<'a> {
    /// A store filling the empty `full` cache (when given) and every branch.
    pub fn new(full: Option<&'a mut KvCache>, branches: Vec<CompressingStore<'a>>) -> Result<Self> {
        if full.as_ref().is_some_and(|cache| !cache.is_empty()) {
            return Err(CoreError::InvalidParameter(
                "a shared prefill starts from an empty cache (a fresh prompt)".into(),
            ));
        }
        Ok(Self { full, branches })
    }

    /// What each branch kept, in the order given.
    pub fn outcomes(self) -> Vec<CompressionOutcome> {
        self.branches
            .into_iter()
            .map(CompressingStore::outcome)
            .collect()
    }
}

impl KvStore for SharedPrefillStore<'_> {
    fn position(&self) -> usize {
        0
    }

    fn check_room(&self, new_positions: usize) -> Result<()> {
        if let Some(full) = &self.full {
            full.check_room(new_positions)?;
        }
        self.branches
            .iter()
            .try_for_each(|branch| branch.check_room(new_positions))
    }

    fn attend(&mut self, layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>> {
        let (queries, keys, values) = (qkv.queries.clone(), qkv.keys.clone(), qkv.values.clone());
        let wants_sums = self
            .branches
            .iter()
            .any(|branch| branch.compressor.needs_column_sums());
        let (context, column_sums) = attend_whole(kernel, qkv, wants_sums);
        for branch in &mut self.branches {
            branch.keep(
                layer,
                &queries,
                keys.clone(),
                values.clone(),
                column_sums.as_ref(),
            )?;
        }
        if let Some(full) = self.full.as_deref_mut() {
            full.store_compressed(layer, keys, values)?;
        }
        Ok(context)
    }

    fn commit(&mut self, new_positions: usize) {
        if let Some(full) = self.full.as_deref_mut() {
            full.finish_compression(new_positions, new_positions);
        }
        for branch in &mut self.branches {
            branch.commit(new_positions);
        }
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
        let (queries, keys, values) = (qkv.queries.clone(), qkv.keys.clone(), qkv.values.clone());
        let (context, column_sums) = attend_whole(kernel, qkv, self.compressor.needs_column_sums());
        self.keep(layer, &queries, keys, values, column_sums.as_ref())?;
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
        self.check_window(compressor, ids.len())?;
        let layers = self.config().num_layers;
        let pass = self.forward(ids, layers, &mut store, &mut NoHook, options)?;
        Ok((self.logits(pass.hidden), store.outcome()))
    }

    /// Entries dropped from a prompt longer than the sliding window leave gaps the window mask
    /// cannot express; a prompt within the budget is cached whole and stays exact.
    fn check_window(&self, compressor: &dyn KvCompressor, prompt_len: usize) -> Result<()> {
        if let Some(window) = self.config().sliding_window
            && prompt_len > window
            && prompt_len > compressor.budget()
        {
            return Err(CoreError::InvalidParameter(format!(
                "{} cannot compress a {prompt_len}-token prompt on a model with a {window}-token sliding window",
                compressor.name()
            )));
        }
        Ok(())
    }

    /// One standard-attention pass of the prompt `ids` serving several answers: the whole
    /// prompt's keys and values go to the empty `full` cache (when given) and each
    /// `(compressor, cache)` pair keeps its compressor's entries. Returns the last position's
    /// logits (the same for every branch: compression changes only what later tokens see) and
    /// each branch's outcome. The same sliding-window limits as
    /// [`prefill_compressed`](Self::prefill_compressed) apply to every branch.
    pub fn prefill_shared(
        &self,
        ids: &[u32],
        full: Option<&mut KvCache>,
        branches: Vec<(&dyn KvCompressor, &mut KvCache)>,
        options: &RunOptions,
    ) -> Result<(Tensor<1>, Vec<CompressionOutcome>)> {
        let mut stores = Vec::with_capacity(branches.len());
        for (compressor, cache) in branches {
            self.check_window(compressor, ids.len())?;
            stores.push(CompressingStore::new(cache, compressor, ids.len())?);
        }
        let mut store = SharedPrefillStore::new(full, stores)?;
        let layers = self.config().num_layers;
        let pass = self.forward(ids, layers, &mut store, &mut NoHook, options)?;
        Ok((self.logits(pass.hidden), store.outcomes()))
    }
}
