//! The early-exit hook: what a selection pass exposes at a layer (post-RoPE queries of the last
//! positions, post-RoPE keys of every position) and the passes that collect it.

use burn::tensor::Tensor;

use crate::decoder::Decoder;
use crate::error::{CoreError, Result};
use crate::hook::{Flow, LayerHook, LayerView};
use crate::kv::{KvCache, NoCache};
use crate::options::RunOptions;
use crate::prefix::PrefixCache;

/// The view of one layer that token selectors score from.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Index of the layer (0-based).
    pub layer: usize,
    /// Post-RoPE queries of the last `w` positions, `[num_heads, w, head_dim]`.
    pub queries: Tensor<3>,
    /// Post-RoPE keys of all `n` positions, `[num_kv_heads, n, head_dim]`.
    pub keys: Tensor<3>,
}

impl Probe {
    /// Bundles a layer's probe.
    pub fn new(layer: usize, queries: Tensor<3>, keys: Tensor<3>) -> Self {
        Self {
            layer,
            queries,
            keys,
        }
    }

    /// Number of input positions `n`.
    pub fn num_positions(&self) -> usize {
        self.keys.dims()[1]
    }

    /// Number of query heads.
    pub fn num_heads(&self) -> usize {
        self.queries.dims()[0]
    }

    /// Number of key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.keys.dims()[0]
    }

    /// Number of trailing query positions held.
    pub fn query_window(&self) -> usize {
        self.queries.dims()[1]
    }
}

/// Receives probes during [`Decoder::observe`].
pub trait LayerObserver {
    /// Whether the probe of `layer` is wanted (the stop layer's always is).
    fn wants(&self, layer: usize) -> bool;
    /// Takes one layer's probe.
    fn observe(&mut self, probe: Probe);
}

/// Keeps the probes of the listed layers, in the order they come.
pub(crate) struct Capture<'a> {
    pub layers: &'a [usize],
    pub probes: Vec<Probe>,
}

impl LayerObserver for Capture<'_> {
    fn wants(&self, layer: usize) -> bool {
        self.layers.contains(&layer)
    }
    fn observe(&mut self, probe: Probe) {
        self.probes.push(probe);
    }
}

/// The hook of a selection pass: hands `observer` the probes it wants and stops at `stop_layer`
/// after probing it.
pub(crate) struct ProbeHook<'a> {
    pub observer: &'a mut dyn LayerObserver,
    pub stop_layer: usize,
    pub query_window: usize,
}

impl LayerHook for ProbeHook<'_> {
    fn at_layer(&mut self, view: &LayerView<'_>) -> Flow {
        let stop = view.layer == self.stop_layer;
        if stop || self.observer.wants(view.layer) {
            self.observer.observe(view.probe(self.query_window));
        }
        if stop { Flow::Stop } else { Flow::Continue }
    }
}

impl Decoder {
    /// The early-exit hook: layers `0..layer` run fully over `ids`; at `layer` only the normed
    /// input, the post-RoPE queries of the last `query_window` positions and the post-RoPE keys of
    /// all positions are computed; nothing after that runs.
    pub fn probe(
        &self,
        ids: &[u32],
        layer: usize,
        query_window: usize,
        options: &RunOptions,
    ) -> Result<Probe> {
        let mut probes = self.probe_layers(ids, &[layer], query_window, options)?;
        probes.pop().ok_or(CoreError::InvalidParameter(format!(
            "the selection pass did not reach layer {layer}"
        )))
    }

    /// Probes of several `layers` (ascending, deduplicated) from one pass that stops at the
    /// highest of them: every layer below it runs fully once, the highest as a probe only.
    pub fn probe_layers(
        &self,
        ids: &[u32],
        layers: &[usize],
        query_window: usize,
        options: &RunOptions,
    ) -> Result<Vec<Probe>> {
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
        self.observe(ids, stop, query_window, &mut capture, options)?;
        capture.probes.sort_by_key(|p| p.layer);
        Ok(capture.probes)
    }

    /// [`probe_layers`](Self::probe_layers) continuing from the longest prefix of `ids` that
    /// `prefix_cache` holds a pass over (same stop layer, every layer in `layers` probed), and
    /// keeping this pass's state there for later prompts. Returns the probes and the number of
    /// positions reused.
    pub fn probe_layers_reusing(
        &self,
        ids: &[u32],
        layers: &[usize],
        query_window: usize,
        options: &RunOptions,
        prefix_cache: &mut PrefixCache,
    ) -> Result<(Vec<Probe>, usize)> {
        let mut layers = layers.to_vec();
        layers.sort_unstable();
        layers.dedup();
        let Some(&stop_layer) = layers.last() else {
            return Err(CoreError::InvalidParameter(
                "no layer to probe: the selector asked for none".into(),
            ));
        };
        self.check_probe(stop_layer, query_window)?;
        self.check_ids(ids, 0)?;
        let query_window = query_window.min(ids.len());
        let (start, reused) = match prefix_cache.selection_prefix(
            ids,
            stop_layer,
            &layers,
            query_window,
            self.rope().embedding(),
        ) {
            Some(found) => (found.state, found.reused),
            None => {
                let cache = KvCache::new(
                    stop_layer,
                    self.config().head_dim,
                    ids.len(),
                    self.dtype(),
                    self.device(),
                );
                let fresh = EarlyLayers {
                    cache,
                    keys: Vec::new(),
                };
                (fresh, 0)
            }
        };
        let pass = SelectionPass {
            stop_layer,
            query_window,
            chunk: options
                .selection_chunk
                .unwrap_or(usize::MAX)
                .max(query_window),
        };
        let mut capture = Capture {
            layers: &layers,
            probes: Vec::with_capacity(layers.len()),
        };
        let state = self.observe_continuing(ids, start, pass, &mut capture, options)?;
        prefix_cache.insert_selection(ids, stop_layer, state);
        Ok((capture.probes, reused))
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
        options: &RunOptions,
    ) -> Result<()> {
        self.check_probe(stop_layer, query_window)?;
        let chunk = options
            .selection_chunk
            .unwrap_or(usize::MAX)
            .max(query_window);
        if ids.len() > chunk {
            return self.observe_chunked(ids, stop_layer, query_window, chunk, observer, options);
        }
        let mut hook = ProbeHook {
            observer,
            stop_layer,
            query_window,
        };
        self.forward(ids, stop_layer + 1, &mut NoCache, &mut hook, options)?;
        Ok(())
    }

    /// Fails unless a pass can stop at `stop_layer` and probe `query_window` ≥ 1 positions.
    pub(crate) fn check_probe(&self, stop_layer: usize, query_window: usize) -> Result<()> {
        if stop_layer >= self.config().num_layers {
            return Err(CoreError::FilterLayerOutOfRange {
                layer: stop_layer,
                num_layers: self.config().num_layers,
            });
        }
        if query_window == 0 {
            return Err(CoreError::InvalidParameter(
                "the probe's query window must hold at least one position".into(),
            ));
        }
        Ok(())
    }

    /// The selection pass in chunks (see [`RunOptions::selection_chunk`]): layers `0..stop_layer`
    /// run chunk by chunk through a temporary cache, the keys of every observed layer are
    /// gathered across chunks, and the queries come from the last chunk, which holds at least
    /// `query_window` positions. The observer then sees the probes one pass would give.
    fn observe_chunked(
        &self,
        ids: &[u32],
        stop_layer: usize,
        query_window: usize,
        chunk: usize,
        observer: &mut dyn LayerObserver,
        options: &RunOptions,
    ) -> Result<()> {
        self.check_ids(ids, 0)?;
        let cache = KvCache::new(
            stop_layer,
            self.config().head_dim,
            ids.len(),
            self.dtype(),
            self.device(),
        );
        let start = EarlyLayers {
            cache,
            keys: Vec::new(),
        };
        let pass = SelectionPass {
            stop_layer,
            query_window,
            chunk,
        };
        self.observe_continuing(ids, start, pass, observer, options)?;
        Ok(())
    }

    /// Continues a selection pass whose first `start.cache.position()` positions of `ids` are
    /// done (their keys/values of layers `0..stop_layer` in `start.cache`, the keys of observed
    /// layers in `start.keys`): the rest runs in chunks, the last at least `query_window` long
    /// (the caller leaves that many positions to run), and `observer` gets the probes of all of
    /// `ids`. Returns the state over all of `ids`, for a later prompt that extends them.
    pub(crate) fn observe_continuing(
        &self,
        ids: &[u32],
        start: EarlyLayers,
        pass: SelectionPass,
        observer: &mut dyn LayerObserver,
        options: &RunOptions,
    ) -> Result<EarlyLayers> {
        /// Per observed layer: the keys of every chunk so far and the latest chunk's queries.
        struct Gather<'a> {
            inner: &'a dyn LayerObserver,
            layers: Vec<(usize, Vec<Tensor<3>>, Option<Tensor<3>>)>,
        }
        impl LayerObserver for Gather<'_> {
            fn wants(&self, layer: usize) -> bool {
                self.inner.wants(layer)
            }
            fn observe(&mut self, probe: Probe) {
                match self.layers.iter_mut().find(|(l, _, _)| *l == probe.layer) {
                    Some((_, keys, queries)) => {
                        keys.push(probe.keys);
                        *queries = Some(probe.queries);
                    }
                    None => self
                        .layers
                        .push((probe.layer, vec![probe.keys], Some(probe.queries))),
                }
            }
        }
        let SelectionPass {
            stop_layer,
            query_window,
            chunk,
        } = pass;
        let done = start.cache.position();
        if done + query_window > ids.len() {
            return Err(CoreError::InvalidParameter(format!(
                "a selection pass continuing after {done} of {} positions leaves fewer than the \
                 query window ({query_window}) to run",
                ids.len()
            )));
        }
        // Chunk boundaries, the last chunk at least `query_window` long.
        let mut bounds: Vec<(usize, usize)> = Vec::new();
        let mut from = done;
        while from < ids.len() {
            let mut end = from.saturating_add(chunk).min(ids.len());
            if ids.len() - end < query_window && end < ids.len() {
                end = ids.len();
            }
            bounds.push((from, end));
            from = end;
        }
        let EarlyLayers { mut cache, keys } = start;
        let mut gather = Gather {
            inner: &*observer,
            layers: keys
                .into_iter()
                .map(|(layer, keys)| (layer, vec![keys], None))
                .collect(),
        };
        for &(from, end) in &bounds {
            let mut hook = ProbeHook {
                observer: &mut gather,
                stop_layer,
                query_window: query_window.min(end - from),
            };
            self.forward(
                &ids[from..end],
                stop_layer + 1,
                &mut cache,
                &mut hook,
                options,
            )?;
        }
        let mut layers = gather.layers;
        layers.sort_by_key(|(layer, _, _)| *layer);
        let mut kept = Vec::with_capacity(layers.len());
        for (layer, keys, queries) in layers {
            let keys = if keys.len() == 1 {
                keys.into_iter().next().expect("one")
            } else {
                Tensor::cat(keys, 1)
            };
            if let Some(queries) = queries {
                observer.observe(Probe::new(layer, queries, keys.clone()));
            }
            kept.push((layer, keys));
        }
        Ok(EarlyLayers { cache, keys: kept })
    }
}

/// How a selection pass runs: where it stops, the probe's query window, its chunk length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectionPass {
    pub stop_layer: usize,
    pub query_window: usize,
    pub chunk: usize,
}

/// What a selection pass leaves behind over the positions it ran: the keys/values of layers
/// `0..stop_layer` and the post-RoPE keys (`[kv_heads, positions, head_dim]`) of each observed
/// layer, the stop layer included.
#[derive(Debug)]
pub(crate) struct EarlyLayers {
    pub cache: KvCache,
    pub keys: Vec<(usize, Tensor<3>)>,
}
