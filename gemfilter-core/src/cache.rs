//! Key/value cache for incremental decoding, sized once.

use burn::tensor::{DType, Device, Tensor};

use crate::error::{CoreError, Result};

/// Per-layer keys and values of the positions processed so far.
///
/// Storage for `capacity` positions is allocated once per layer (on first use) and filled in
/// place; attention reads the filled prefix.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    len: usize,
    capacity: usize,
    num_kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    /// An empty cache for `num_layers` layers holding up to `capacity` positions.
    pub fn new(
        num_layers: usize,
        num_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity,
            num_kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Fails unless `additional` more positions fit.
    pub fn check_room(&self, additional: usize) -> Result<()> {
        if self.len + additional > self.capacity {
            return Err(CoreError::CacheFull {
                capacity: self.capacity,
                needed: self.len + additional,
            });
        }
        Ok(())
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) of `layer` after the cached
    /// positions and returns all keys and values of that layer including the new ones.
    /// The cache length advances only with [`KvCache::advance`], once every layer is written.
    pub fn append(
        &mut self,
        layer: usize,
        keys: Tensor<4>,
        values: Tensor<4>,
    ) -> Result<(Tensor<4>, Tensor<4>)> {
        let [batch, heads, n, dim] = keys.dims();
        self.check_room(n)?;
        let end = self.len + n;
        let (stored_keys, stored_values) = self.layers[layer].take().unwrap_or_else(|| {
            let shape = [batch, self.num_kv_heads, self.capacity, self.head_dim];
            let zeros = || Tensor::<4>::zeros(shape, &self.device).cast(self.dtype);
            (zeros(), zeros())
        });
        let range = [0..batch, 0..heads, self.len..end, 0..dim];
        let stored_keys = stored_keys.slice_assign(range.clone(), keys);
        let stored_values = stored_values.slice_assign(range, values);
        let visible = (
            stored_keys.clone().narrow(2, 0, end),
            stored_values.clone().narrow(2, 0, end),
        );
        self.layers[layer] = Some((stored_keys, stored_values));
        Ok(visible)
    }

    /// Marks `n` appended positions as cached.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
