//! Reuse of a prompt prefix's work across requests: several questions over one long document.
//!
//! A [`PrefixCache`] keeps, per recent prompt, what its passes computed over it, bounded by bytes
//! and evicted least-recently-used first:
//!
//! - after a GemFilter **selection pass** stopping at layer r: the keys/values of layers
//!   `0..r` and the post-RoPE keys of the probed layers (r included) — r ÷ L of a full cache;
//! - after a **full-attention** prefill: the ordinary KV cache of every layer over the prompt.
//!
//! A later prompt that starts with the same tokens copies the shared prefix and runs only its
//! new tokens: through layers `0..r` for a selection (then GemFilter reruns the model on the k kept
//! tokens as always), or through every layer for full attention. The selection is the one a cold
//! pass makes: the same arithmetic over the same positions, in two chunks instead of one.
//!
//! One cache serves one [`Decoder`](crate::Decoder): its entries are that model's activations.

use burn::tensor::Tensor;

use crate::kv::KvCache;
use crate::nn::RotaryEmbedding;
use crate::probe::EarlyLayers;

/// What an entry's keys/values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrefixKind {
    /// A selection pass stopping at `stop_layer`: layers below it cached, probe keys kept.
    Selection { stop_layer: usize },
    /// A full prefill: every layer cached.
    Full,
}

/// One prompt's cached work.
#[derive(Debug)]
pub(crate) struct PrefixEntry {
    kind: PrefixKind,
    tokens: Vec<u32>,
    cache: KvCache,
    /// Probe keys per observed layer, `[kv_heads, positions, head_dim]` (selection only).
    keys: Vec<(usize, Tensor<3>)>,
    bytes: usize,
}

/// Counters of a [`PrefixCache`], for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PrefixCacheStats {
    /// Lookups that reused at least one position.
    pub hits: u64,
    /// Lookups that found nothing to reuse.
    pub misses: u64,
    /// Positions reused over all hits.
    pub reused_tokens: u64,
    /// Entries dropped to stay within the byte bound.
    pub evictions: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes held now.
    pub bytes: usize,
}

/// Recent prompts' early-layer (GemFilter) and full (full attention) keys/values, bounded by
/// bytes, least-recently-used evicted first. See the [module docs](self).
#[derive(Debug)]
pub struct PrefixCache {
    max_bytes: usize,
    /// Least recently used first.
    entries: Vec<PrefixEntry>,
    stats: PrefixCacheStats,
}

/// What a lookup found: a copy of the reusable state over the first `reused` positions.
pub(crate) struct Reused<T> {
    pub state: T,
    pub reused: usize,
}

impl PrefixCache {
    /// An empty cache holding at most `max_bytes` of keys and values (0 disables reuse).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            entries: Vec::new(),
            stats: PrefixCacheStats::default(),
        }
    }

    /// The byte bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Counters so far, with the current size.
    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            entries: self.entries.len(),
            bytes: self.bytes(),
            ..self.stats
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.bytes).sum()
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The entry of `kind` sharing the longest prefix with `ids` (at most `limit` positions)
    /// and holding probe keys of every layer in `layers`; marks it most recently used. A prefix
    /// whose positions were rotated with other frequencies than a pass over all of `ids` uses
    /// (longrope switches tables past the original context) does not count.
    fn best_match(
        &mut self,
        kind: PrefixKind,
        ids: &[u32],
        layers: &[usize],
        limit: usize,
        rope: &RotaryEmbedding,
    ) -> Option<(usize, usize)> {
        let long = rope.uses_long_factors(ids.len().saturating_sub(1));
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind == kind)
            .filter(|(_, e)| layers.iter().all(|l| e.keys.iter().any(|(k, _)| k == l)))
            .map(|(i, e)| (i, common_prefix(&e.tokens, ids).min(limit)))
            .filter(|&(_, shared)| shared > 0)
            .filter(|&(i, _)| {
                let cached = self.entries[i].tokens.len();
                rope.uses_long_factors(cached.saturating_sub(1)) == long
            })
            .max_by_key(|&(i, shared)| (shared, i));
        match best {
            Some((index, shared)) => {
                self.stats.hits += 1;
                self.stats.reused_tokens += shared as u64;
                let entry = self.entries.remove(index);
                self.entries.push(entry);
                Some((self.entries.len() - 1, shared))
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Selection-pass state over the longest cached prefix of `ids` for a pass stopping at
    /// `stop_layer` that observes `layers`, leaving at least `query_window` positions to run;
    /// storage sized for all of `ids`.
    pub(crate) fn selection_prefix(
        &mut self,
        ids: &[u32],
        stop_layer: usize,
        layers: &[usize],
        query_window: usize,
        rope: &RotaryEmbedding,
    ) -> Option<Reused<EarlyLayers>> {
        let limit = ids.len().saturating_sub(query_window);
        let kind = PrefixKind::Selection { stop_layer };
        let (index, reused) = self.best_match(kind, ids, layers, limit, rope)?;
        let entry = &self.entries[index];
        let cache = entry.cache.copy_prefix(reused, ids.len()).ok()?;
        let keys = entry
            .keys
            .iter()
            .filter(|(layer, _)| layers.contains(layer))
            .map(|(layer, keys)| (*layer, keys.clone().narrow(1, 0, reused)))
            .collect();
        Some(Reused {
            state: EarlyLayers { cache, keys },
            reused,
        })
    }

    /// A full KV cache over the longest cached prefix of `ids`, leaving at least one position
    /// to run, with room for `capacity` entries.
    pub(crate) fn full_prefix(
        &mut self,
        ids: &[u32],
        capacity: usize,
        rope: &RotaryEmbedding,
    ) -> Option<Reused<KvCache>> {
        let limit = ids.len().saturating_sub(1);
        let (index, reused) = self.best_match(PrefixKind::Full, ids, &[], limit, rope)?;
        let cache = self.entries[index]
            .cache
            .copy_prefix(reused, capacity)
            .ok()?;
        Some(Reused {
            state: cache,
            reused,
        })
    }

    /// Keeps a selection pass's state over `ids`.
    pub(crate) fn insert_selection(&mut self, ids: &[u32], stop_layer: usize, state: EarlyLayers) {
        let keys_bytes: usize = state
            .keys
            .iter()
            .map(|(_, k)| k.dims().iter().product::<usize>() * k.dtype().size())
            .sum();
        let bytes = state.cache.bytes() + keys_bytes;
        self.insert(PrefixEntry {
            kind: PrefixKind::Selection { stop_layer },
            tokens: ids.to_vec(),
            cache: state.cache,
            keys: state.keys,
            bytes,
        });
    }

    /// Keeps a full prefill's cache over the prompt `ids` (generated positions dropped).
    pub(crate) fn insert_full(&mut self, ids: &[u32], mut cache: KvCache) {
        if cache.truncate(ids.len()).is_err() || cache.len() != ids.len() {
            return;
        }
        let bytes = cache.bytes();
        self.insert(PrefixEntry {
            kind: PrefixKind::Full,
            tokens: ids.to_vec(),
            cache,
            keys: Vec::new(),
            bytes,
        });
    }

    fn insert(&mut self, entry: PrefixEntry) {
        if entry.bytes > self.max_bytes {
            return;
        }
        // An entry whose prompt this one extends (same kind and layers) is superseded.
        self.entries.retain(|old| {
            !(old.kind == entry.kind
                && old.tokens.len() <= entry.tokens.len()
                && entry.tokens.starts_with(&old.tokens)
                && old
                    .keys
                    .iter()
                    .all(|(l, _)| entry.keys.iter().any(|(k, _)| k == l)))
        });
        self.entries.push(entry);
        while self.bytes() > self.max_bytes {
            self.entries.remove(0);
            self.stats.evictions += 1;
        }
    }
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_counts_shared_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[9], &[1]), 0);
    }
}
