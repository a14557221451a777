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
/// processed, which is where the next token's rotary position starts.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<Storage>>,
    len: usize,
    position: usize,
    capacity: usize,
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
            len: 0,
            position: 0,
            capacity,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Entries held per layer and head (equal to [`position`](Self::position) unless compressed).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens processed so far: the rotary position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Entries the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Fails unless `additional` more entries fit.
    pub fn check_room(&self, additional: usize) -> Result<()> {
        if self.len + additional > self.capacity {
            return Err(CoreError::CacheFull {
                capacity: self.capacity,
                needed: self.len + additional,
            });
        }
        Ok(())
    }

    /// A layer's empty storage for `heads` heads, on the host for CPU devices.
    fn storage(&self, heads: usize) -> Storage {
        if runs_on_host(&self.device) {
            return Storage::Host(HostKeysValues::new(heads, self.head_dim, self.capacity));
        }
        let shape = [1, heads, self.capacity, self.head_dim];
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
        if at + n > self.capacity {
            return Err(CoreError::CacheFull {
                capacity: self.capacity,
                needed: at + n,
            });
        }
        let storage = match self.layers[layer].take() {
            Some(storage) => storage,
            None => self.storage(heads),
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
        self.len = entries;
        self.position = positions;
    }

    /// A copy of this cache's first `len` entries (positions `0..len`) with room for `capacity`
    /// entries: a later prompt sharing those positions continues from it. Fails on a compressed
    /// cache (its entries are not a prefix of positions) or when `len` exceeds what is held.
    pub fn copy_prefix(&self, len: usize, capacity: usize) -> Result<KvCache> {
        if self.len != self.position {
            return Err(CoreError::InvalidParameter(
                "a compressed KV cache holds no prompt prefix to reuse".into(),
            ));
        }
        if len > self.len || len > capacity {
            return Err(CoreError::InvalidParameter(format!(
                "cannot copy {len} cached positions: the cache holds {} and the copy has room for {capacity}",
                self.len
            )));
        }
        let layers = self
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
            layers,
            len,
            position: len,
            capacity,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }

    /// Forgets every position from `len` on (storage is kept): what a prompt's cache holds once
    /// its generated tokens are dropped. Fails on a compressed cache.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if self.len != self.position {
            return Err(CoreError::InvalidParameter(
                "a compressed KV cache cannot be truncated to a prompt prefix".into(),
            ));
        }
        self.len = self.len.min(len);
        self.position = self.len;
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
        self.len += n;
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
        let key_start = self.position - self.len;
        let device = qkv.queries.device();
        let new = qkv.keys.dims()[2];
        kernel.time("kv cache write", &device, || {
            self.write(layer, qkv.keys, qkv.values, self.len)
        })?;
        let end = self.len + new;
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
