//! Key/value cache for incremental decoding, sized once.

use burn::tensor::{DType, Device, Tensor};

use super::KvStore;
use crate::cpu::attention::Visibility;
use crate::cpu::host_kv::HostKeysValues;
use crate::cpu::runs_on_host;
use crate::error::{CoreError, Result};
use crate::nn::attention::repeat_kv;
use crate::nn::{AttentionKernel, Qkv};

/// Per-layer keys and values of the positions processed so far.
///
/// Storage for `capacity` entries is allocated once per layer (on first use) and filled in
/// place; attention reads the filled prefix. On CPU devices the cache lives in host memory in the
/// layout of the CPU attention kernel ([`crate::cpu::attention`]), so a decode step neither copies
/// the cache nor runs tensor operations over it; on GPU devices it is a pair of device tensors. A
/// cache compressed by a [`KvCompressor`](crate::compress::KvCompressor) holds fewer entries than
/// positions seen: [`len`](Self::len) counts entries, [`position`](Self::position) the tokens
/// processed, which is where the next token's rotary position starts. Layers may hold different
/// numbers of entries (a propagated prompt, see [`from_layers`](Self::from_layers)): each layer's
/// entries stand for its last positions before [`position`](Self::position).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<Storage>>,
    /// Entries held, per layer.
    lens: Vec<usize>,
    position: usize,
    /// Entries each layer's storage holds at most.
    capacities: Vec<usize>,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

/// One layer's keys and values.
// One per layer: the size difference costs nothing, a box would cost an indirection per access.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Storage {
    /// `[1, heads, capacity, head_dim]` device tensors.
    Device(Tensor<4>, Tensor<4>),
    /// Host memory: per head, keys transposed (`[head_dim][capacity]`) and values row-major.
    Host(HostKeysValues),
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding up to `capacity` entries of `head_dim`
    /// wide keys and values; each layer's storage is allocated on its first write, with the head
    /// count of what is written.
    pub fn new(
        num_layers: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            lens: vec![0; num_layers],
            position: 0,
            capacities: vec![capacity; num_layers],
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Entries held per head by the fullest layer (equal to [`position`](Self::position) unless
    /// compressed or propagated).
    pub fn len(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }

    /// Entries held per head by each layer.
    pub fn layer_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some layer holds fewer entries than positions seen.
    fn is_compressed(&self) -> bool {
        self.lens.iter().any(|&len| len != self.position)
    }

    /// How many more positions every layer can take.
    pub fn room(&self) -> usize {
        self.lens
            .iter()
            .zip(&self.capacities)
            .map(|(len, capacity)| capacity - len)
            .min()
            .unwrap_or(0)
    }

    /// Tokens processed so far: the rotary position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Entries the largest layer can hold.
    pub fn capacity(&self) -> usize {
        self.capacities.iter().copied().max().unwrap_or(0)
    }

    /// Fails unless `additional` more entries fit in every layer.
    pub fn check_room(&self, additional: usize) -> Result<()> {
        for (&len, &capacity) in self.lens.iter().zip(&self.capacities) {
            if len + additional > capacity {
                return Err(CoreError::CacheFull {
                    capacity,
                    needed: len + additional,
                });
            }
        }
        Ok(())
    }

    /// A layer's empty storage for `heads` heads, on the host for CPU devices.
    fn storage(&self, layer: usize, heads: usize) -> Storage {
        let capacity = self.capacities[layer];
        if runs_on_host(&self.device) {
            return Storage::Host(HostKeysValues::new(heads, self.head_dim, capacity));
        }
        let shape = [1, heads, capacity, self.head_dim];
        let zeros = || Tensor::<4>::zeros(shape, &self.device).cast(self.dtype);
        Storage::Device(zeros(), zeros())
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) of `layer` at entries
    /// `at..at + n`, allocating the layer with `heads` heads first if needed. When the layer
    /// stores one entry set per query head (see
    /// [`HeadSharing::PerQueryHead`](crate::compress::HeadSharing)), the new keys and values are
    /// repeated to match.
    fn write(&mut self, layer: usize, keys: Tensor<4>, values: Tensor<4>, at: usize) -> Result<()> {
        let [batch, heads, n, dim] = keys.dims();
        if at + n > self.capacities[layer] {
            return Err(CoreError::CacheFull {
                capacity: self.capacities[layer],
                needed: at + n,
            });
        }
        let storage = match self.layers[layer].take() {
            Some(storage) => storage,
            None => self.storage(layer, heads),
        };
        let storage = match storage {
            Storage::Host(mut host) => {
                host.write(keys, values, at);
                Storage::Host(host)
            }
            Storage::Device(stored_keys, stored_values) => {
                let stored_heads = stored_keys.dims()[1];
                let groups = stored_heads / heads;
                let (keys, values) = (repeat_kv(keys, groups), repeat_kv(values, groups));
                let range = [0..batch, 0..stored_heads, at..at + n, 0..dim];
                Storage::Device(
                    stored_keys.slice_assign(range.clone(), keys),
                    stored_values.slice_assign(range, values),
                )
            }
        };
        self.layers[layer] = Some(storage);
        Ok(())
    }

    /// Stores the compressed keys/values (`[1, heads, entries, head_dim]`) of `layer` into an
    /// empty cache. Every layer must store the same number of entries; the cache then holds
    /// `entries` entries for `positions` tokens after [`finish_compression`](Self::finish_compression).
    pub fn store_compressed(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> Result<()> {
        if !self.is_empty() {
            return Err(CoreError::InvalidParameter(
                "a compressed prompt must start from an empty KV cache".into(),
            ));
        }
        self.layers[layer] = None;
        self.write(layer, keys, values, 0)
    }

    /// Marks the compressed prompt as cached: `entries` entries per layer standing for
    /// `positions` tokens.
    pub fn finish_compression(&mut self, entries: usize, positions: usize) {
        self.lens.fill(entries);
        self.position = positions;
    }

    /// A cache holding, per layer, the given keys and values (`[1, kv_heads, entries, head_dim]`;
    /// layers may hold different numbers of entries, at most `positions`), standing for the
    /// last positions before `positions`, with room for `room` more entries in every layer:
    /// what a propagated prompt decodes from (see [`EarlyKv`](crate::EarlyKv)).
    pub fn from_layers(
        layers: Vec<(Tensor<4>, Tensor<4>)>,
        positions: usize,
        room: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let lens: Vec<usize> = layers.iter().map(|(keys, _)| keys.dims()[2]).collect();
        if let Some(&len) = lens.iter().find(|&&len| len > positions) {
            return Err(CoreError::InvalidParameter(format!(
                "a layer holds {len} entries for {positions} positions"
            )));
        }
        let mut cache = Self {
            layers: (0..layers.len()).map(|_| None).collect(),
            capacities: lens.iter().map(|len| len + room).collect(),
            lens: vec![0; layers.len()],
            position: 0,
            head_dim,
            dtype,
            device: device.clone(),
        };
        for (layer, (keys, values)) in layers.into_iter().enumerate() {
            cache.write(layer, keys, values, 0)?;
        }
        cache.lens = lens;
        cache.position = positions;
        Ok(cache)
    }

    /// A copy of this cache's first `len` entries (positions `0..len`) with room for `capacity`
    /// entries: a later prompt sharing those positions continues from it. Fails on a compressed
    /// cache (its entries are not a prefix of positions) or when `len` exceeds what is held.
    pub fn copy_prefix(&self, len: usize, capacity: usize) -> Result<KvCache> {
        if self.is_compressed() {
            return Err(CoreError::InvalidParameter(
                "a compressed KV cache holds no prompt prefix to reuse".into(),
            ));
        }
        if len > self.position || len > capacity {
            return Err(CoreError::InvalidParameter(format!(
                "cannot copy {len} cached positions: the cache holds {} and the copy has room for {capacity}",
                self.position
            )));
        }
        let layers: Vec<Option<Storage>> = self
            .layers
            .iter()
            .map(|storage| {
                storage.as_ref().map(|storage| match storage {
                    Storage::Host(host) => Storage::Host(host.copy_prefix(len, capacity)),
                    Storage::Device(keys, values) => {
                        let [batch, heads, _, dim] = keys.dims();
                        let copy = |stored: &Tensor<4>| {
                            let zeros =
                                Tensor::<4>::zeros([batch, heads, capacity, dim], &self.device)
                                    .cast(self.dtype);
                            if len == 0 {
                                return zeros;
                            }
                            zeros.slice_assign(
                                [0..batch, 0..heads, 0..len, 0..dim],
                                stored.clone().narrow(2, 0, len),
                            )
                        };
                        Storage::Device(copy(keys), copy(values))
                    }
                })
            })
            .collect();
        Ok(KvCache {
            lens: vec![len; layers.len()],
            capacities: vec![capacity; layers.len()],
            layers,
            position: len,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }

    /// Forgets every position from `len` on (storage is kept): what a prompt's cache holds once
    /// its generated tokens are dropped. Fails on a compressed cache.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if self.is_compressed() {
            return Err(CoreError::InvalidParameter(
                "a compressed KV cache cannot be truncated to a prompt prefix".into(),
            ));
        }
        self.position = self.position.min(len);
        self.lens.fill(self.position);
        Ok(())
    }

    /// Bytes of key/value storage allocated so far (every layer written, at full capacity).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|storage| match storage {
                Storage::Host(host) => host.bytes(),
                Storage::Device(keys, values) => {
                    let elements: usize = keys.dims().iter().product::<usize>()
                        + values.dims().iter().product::<usize>();
                    elements * keys.dtype().size()
                }
            })
            .sum()
    }

    /// Number of layers this cache has room for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Marks `n` appended positions as cached.
    pub fn advance(&mut self, n: usize) {
        for len in &mut self.lens {
            *len += n;
        }
        self.position += n;
    }
}

impl KvStore for KvCache {
    fn position(&self) -> usize {
        self.position
    }

    fn check_room(&self, new_positions: usize) -> Result<()> {
        KvCache::check_room(self, new_positions)
    }

    fn attend(&mut self, layer: usize, qkv: Qkv, kernel: &AttentionKernel) -> Result<Tensor<4>> {
        // Cached entries stand for the positions just before this pass (a compressed cache holds
        // fewer entries than positions; every entry stays visible).
        let len = self.lens[layer];
        let key_start = self.position - len;
        let device = qkv.queries.device();
        let new = qkv.keys.dims()[2];
        kernel.time("kv cache write", &device, || {
            self.write(layer, qkv.keys, qkv.values, len)
        })?;
        let end = len + new;
        let position = self.position;
        match self.layers[layer].as_ref().expect("written above") {
            Storage::Host(host) => Ok(kernel.time("attention", &device, || {
                let visibility = Visibility {
                    query_start: position,
                    key_start,
                    window: kernel.window,
                };
                host.attend(qkv.queries, end, visibility)
            })),
            Storage::Device(keys, values) => {
                let qkv = Qkv {
                    keys: keys.clone().narrow(2, 0, end),
                    values: values.clone().narrow(2, 0, end),
                    ..qkv
                };
                Ok(kernel.time("attention", &device, || {
                    kernel.attend(qkv, position, key_start)
                }))
            }
        }
    }

    fn commit(&mut self, new_positions: usize) {
        self.advance(new_positions);
    }
}
