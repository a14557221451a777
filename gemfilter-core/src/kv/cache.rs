//! Key/value cache for incremental decoding, sized once.

use burn::tensor::{DType, Device, Tensor};

use super::KvStore;
use crate::error::{CoreError, Result};
use crate::nn::attention::repeat_kv;
use crate::nn::{AttentionKernel, Qkv};

/// Per-layer keys and values of the positions processed so far.
///
/// Storage for `capacity` entries is allocated once per layer (on first use) and filled in
/// place; attention reads the filled prefix. A cache compressed by a
/// [`KvCompressor`](crate::compress::KvCompressor) holds fewer entries than positions seen:
/// [`len`](Self::len) counts entries, [`position`](Self::position) the tokens processed, which
/// is where the next token's rotary position starts.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
    position: usize,
    capacity: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
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

    fn storage(&self, heads: usize) -> (Tensor<4>, Tensor<4>) {
        let shape = [1, heads, self.capacity, self.head_dim];
        let zeros = || Tensor::<4>::zeros(shape, &self.device).cast(self.dtype);
        (zeros(), zeros())
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) of `layer` after the cached
    /// entries and returns all keys and values of that layer including the new ones.
    /// When the layer stores one entry set per query head (see
    /// [`HeadSharing::PerQueryHead`](crate::compress::HeadSharing)), the new keys and values are
    /// repeated to match. The cache length advances only with [`KvCache::advance`], once every
    /// layer is written.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let [batch, heads, n, dim] = keys.dims();
        self.check_room(n)?;
        let end = self.len + n;
        let (stored_keys, stored_values) = match self.layers[layer].take() {
            Some(stored) => stored,
            None => self.storage(heads),
        };
        let stored_heads = stored_keys.dims()[1];
        let groups = stored_heads / heads;
        let (keys, values) = (repeat_kv(keys, groups), repeat_kv(values, groups));
        let range = [0..batch, 0..stored_heads, self.len..end, 0..dim];
        let stored_keys = stored_keys.slice_assign(range.clone(), keys);
        let stored_values = stored_values.slice_assign(range, values);
        let visible = (
            stored_keys.clone().narrow(2, 0, end),
            stored_values.clone().narrow(2, 0, end),
        );
        self.layers[layer] = Some((stored_keys, stored_values));
        Ok(visible)
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
        let [batch, heads, entries, dim] = keys.dims();
        if !self.is_empty() {
            return Err(CoreError::InvalidParameter(
                "a compressed prompt must start from an empty KV cache".into(),
            ));
        }
        self.check_room(entries)?;
        let (stored_keys, stored_values) = self.storage(heads);
        let range = [0..batch, 0..heads, 0..entries, 0..dim];
        self.layers[layer] = Some((
            stored_keys.slice_assign(range.clone(), keys),
            stored_values.slice_assign(range, values),
        ));
        Ok(())
    }

    /// Marks the compressed prompt as cached: `entries` entries per layer standing for
    /// `positions` tokens.
    pub fn finish_compression(&mut self, entries: usize, positions: usize) {
        self.len = entries;
        self.position = positions;
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
        let (keys, values) = self.append(layer, qkv.keys, qkv.values)?;
        Ok(kernel.attend(
            Qkv {
                keys,
                values,
                ..qkv
            },
            self.position,
            key_start,
        ))
    }

    fn commit(&mut self, new_positions: usize) {
        self.advance(new_positions);
    }
}
