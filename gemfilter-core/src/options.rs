//! Per-call settings of a pass: how attention is computed, how prompts are chunked, progress.
//!
//! A [`Decoder`](crate::Decoder) never changes after it is built, so one model serves callers
//! with different settings at once; each call says how it wants to run with a [`RunOptions`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::profile::Profile;

/// Default bound on attention scores held at once (elements; 32 Mi × 4 bytes = 128 MiB in f32).
pub const DEFAULT_MAX_SCORES_PER_BLOCK: usize = 32 << 20;

/// How a call runs its passes. `RunOptions::default()` is what most callers want.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Use the backend's fused attention op where it applies (default); the blocked
    /// implementation with explicit masks is used otherwise and for sliding windows.
    pub fused_attention: bool,
    /// Bound on the attention scores materialised at once (elements, all heads together);
    /// smaller values lower peak memory on long prompts at some speed cost.
    pub max_scores_per_block: usize,
    /// Prefill prompts in chunks of at most this many positions through the KV cache (`None`:
    /// one chunk). Chunks bound the activations (the MLP's `positions × intermediate` tensors
    /// above all) at the price of more, smaller matrix products; the logits are the same.
    pub prefill_chunk: Option<usize>,
    /// Run the selection pass in chunks of at most this many positions (`None`: one pass). It
    /// needs a temporary KV cache for the layers below the filter layer, so it only lowers peak
    /// memory when the activations it bounds outweigh that cache; the probes are the same.
    pub selection_chunk: Option<usize>,
    /// Called after every layer of every pass (e.g. to drive a progress bar).
    pub progress: Option<ProgressHook>,
    /// Collects a per-section wall-clock profile of every pass (see [`crate::profile`]).
    pub profile: Option<Arc<Profile>>,
    /// Raised by another thread to stop the work: every pass checks it after each layer and
    /// fails with [`CoreError::Cancelled`](crate::CoreError::Cancelled).
    pub cancel: Option<CancelFlag>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            fused_attention: true,
            max_scores_per_block: DEFAULT_MAX_SCORES_PER_BLOCK,
            prefill_chunk: None,
            selection_chunk: None,
            progress: None,
            profile: None,
            cancel: None,
        }
    }
}

impl RunOptions {
    /// The same options reporting progress to `hook`.
    pub fn with_progress(self, hook: Option<ProgressHook>) -> Self {
        Self {
            progress: hook,
            ..self
        }
    }

    /// Fails with [`CoreError::Cancelled`](crate::CoreError::Cancelled) once the cancel flag is raised.
    pub fn check_cancelled(&self) -> crate::Result<()> {
        match &self.cancel {
            Some(flag) if flag.is_cancelled() => Err(crate::CoreError::Cancelled),
            _ => Ok(()),
        }
    }

    pub(crate) fn report(&self, progress: ForwardProgress) {
        if let Some(hook) = &self.progress {
            (hook.0)(progress);
        }
    }
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
pub struct ProgressHook(pub Arc<dyn Fn(ForwardProgress) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// A shared flag that cancels a generation from another thread (a client that went away).
/// Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A flag not yet raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag: the work it was given to stops at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the flag was raised.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
