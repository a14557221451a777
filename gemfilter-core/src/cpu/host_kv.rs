//! Keys and values in host memory, in the layout of the CPU attention kernel, and attention of a
//! query tensor over them: what the KV cache keeps on CPU devices, and what an uncached pass
//! builds for one layer.

use burn::tensor::{DType, Tensor, TensorData};

use super::attention::{KeysValues, Visibility, attention};

/// One layer's keys and values for up to `capacity` entries: per head, keys transposed
/// (`[head_dim][capacity]`) and values row-major (`[capacity][head_dim]`).
#[derive(Debug)]
pub(crate) struct HostKeysValues {
    heads: usize,
    head_dim: usize,
    capacity: usize,
    keys_t: Vec<f32>,
    values: Vec<f32>,
}

/// `[1, heads, n, d]` tensor values on the host, f32.
pub(crate) fn host_values(tensor: Tensor<4>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

impl HostKeysValues {
    /// Zeroed storage for `heads` heads.
    pub(crate) fn new(heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self {
            heads,
            head_dim,
            capacity,
            keys_t: vec![0.0; heads * head_dim * capacity],
            values: vec![0.0; heads * capacity * head_dim],
        }
    }

    /// A copy of the first `len` entries in storage for `capacity` entries.
    pub(crate) fn copy_prefix(&self, len: usize, capacity: usize) -> Self {
        let (heads, d, old) = (self.heads, self.head_dim, self.capacity);
        let mut copy = Self::new(heads, d, capacity);
        for row in 0..heads * d {
            copy.keys_t[row * capacity..row * capacity + len]
                .copy_from_slice(&self.keys_t[row * old..row * old + len]);
        }
        for h in 0..heads {
            copy.values[h * capacity * d..(h * capacity + len) * d]
                .copy_from_slice(&self.values[h * old * d..(h * old + len) * d]);
        }
        copy
    }

    /// Bytes held (all `capacity` entries).
    pub(crate) fn bytes(&self) -> usize {
        (self.keys_t.len() + self.values.len()) * std::mem::size_of::<f32>()
    }

    /// Writes `keys`/`values` (`[1, kv_heads, n, head_dim]`) at entries `at..at + n`, repeating
    /// each KV head to the stored heads when they are more (one entry set per query head).
    pub(crate) fn write(&mut self, keys: Tensor<4>, values: Tensor<4>, at: usize) {
        let tensor_heads = keys.dims()[1];
        let (keys, values) = (host_values(keys), host_values(values));
        let (d, capacity) = (self.head_dim, self.capacity);
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

    /// softmax(q·kᵀ/√d)·v of `queries` (`[1, heads, n, head_dim]`) over the first `len`
    /// entries, as a tensor on the queries' device and dtype.
    pub(crate) fn attend(
        &self,
        queries: Tensor<4>,
        len: usize,
        visibility: Visibility,
    ) -> Tensor<4> {
        let [batch, heads, n, d] = queries.dims();
        let device = queries.device();
        let dtype = queries.dtype();
        let queries = host_values(queries);
        let capacity = self.capacity;
        let kv: Vec<KeysValues<'_>> = (0..self.heads)
            .map(|h| KeysValues {
                keys_t: &self.keys_t[h * d * capacity..(h + 1) * d * capacity],
                values: &self.values[h * capacity * d..(h + 1) * capacity * d],
                stride: capacity,
                len,
            })
            .collect();
        let mut out = vec![0.0f32; queries.len()];
        let scale = (d as f32).powf(-0.5);
        attention(&queries, heads, d, &kv, visibility, scale, &mut out);
        let out = Tensor::<4>::from_data(TensorData::new(out, [batch, heads, n, d]), &device);
        if dtype == DType::F32 {
            out
        } else {
            out.cast(dtype)
        }
    }
}
