//! Key/value cache for incremental decoding, sized once.

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::KvStore;
use crate::cpu::attention::{KeysValues, Visibility, attention};
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
    Host(HostLayer),
}

/// A layer's keys and values in host memory.
#[derive(Debug)]
struct HostLayer {
    heads: usize,
    keys_t: Vec<f32>,
    values: Vec<f32>,
}

/// `[1, heads, n, d]` tensor values on the host, f32.
fn host_values(tensor: Tensor<4>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

impl HostLayer {
    fn new(heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self {
            heads,
            keys_t: vec![0.0; heads * head_dim * capacity],
            values: vec![0.0; heads * capacity * head_dim],
        }
    }

    /// Writes `keys`/`values` (`[tensor_heads][n][d]`, host order) at entries `at..at + n`,
    /// repeating each KV head to the stored heads when they are more.
    fn write(
        &mut self,
        keys: &[f32],
        values: &[f32],
        tensor_heads: usize,
        at: usize,
        d: usize,
        capacity: usize,
    ) {
        let n = keys.len() / (tensor_heads * d).max(1);
        let groups = self.heads / tensor_heads;
        for h in 0..self.heads {
            let source = h / groups;
            for j in 0..n {
                let row = &keys[(source * n + j) * d..(source * n + j + 1) * d];
                for (c, &k) in row.iter().enumerate() {
                    self.keys_t[(h * d + c) * capacity + at + j] = k;
                }
                let start = (h * capacity + at + j) * d;
                self.values[start..start + d]
                    .copy_from_slice(&values[(source * n + j) * d..(source * n + j + 1) * d]);
            }
        }
    }

    /// The key/value heads for the attention kernel, `len` entries valid.
    fn heads(&self, d: usize, capacity: usize, len: usize) -> Vec<KeysValues<'_>> {
        (0..self.heads)
            .map(|h| KeysValues {
                keys_t: &self.keys_t[h * d * capacity..(h + 1) * d * capacity],
                values: &self.values[h * capacity * d..(h + 1) * capacity * d],
                stride: capacity,
                len,
            })
            .collect()
    }
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
            return Storage::Host(HostLayer::new(heads, self.head_dim, self.capacity));
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
                let (keys, values) = (host_values(keys), host_values(values));
                host.write(&keys, &values, heads, at, dim, self.capacity);
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
        let (position, d, capacity) = (self.position, self.head_dim, self.capacity);
        match self.layers[layer].as_ref().expect("written above") {
            Storage::Host(host) => Ok(kernel.time("attention", &device, || {
                let [batch, heads, n, _] = qkv.queries.dims();
                let dtype = qkv.queries.dtype();
                let queries = host_values(qkv.queries);
                let mut out = vec![0.0f32; queries.len()];
                let visibility = Visibility {
                    query_start: position,
                    key_start,
                    window: kernel.window,
                };
                let scale = (d as f32).powf(-0.5);
                attention(
                    &queries,
                    heads,
                    d,
                    &host.heads(d, capacity, end),
                    visibility,
                    scale,
                    &mut out,
                );
                let out =
                    Tensor::<4>::from_data(TensorData::new(out, [batch, heads, n, d]), &device);
                if dtype == DType::F32 {
                    out
                } else {
                    out.cast(dtype)
                }
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
