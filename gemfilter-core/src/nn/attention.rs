//! Grouped-query self-attention with a causal (optionally sliding-window) mask.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, Int, Tensor};

use std::sync::Arc;

use super::projection::Projection;
use super::rope::RopeTables;
use crate::cpu::attention::Visibility;
use crate::cpu::host_kv::HostKeysValues;
use crate::cpu::runs_on_host;
use crate::profile::{Profile, timed};

/// The four projections of one attention block. Field names follow Hugging Face checkpoints.
#[derive(Module, Debug)]
pub struct Attention {
    /// Hidden → query heads.
    pub q_proj: Projection,
    /// Hidden → key heads.
    pub k_proj: Projection,
    /// Hidden → value heads.
    pub v_proj: Projection,
    /// Concatenated heads → hidden.
    pub o_proj: Projection,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads.
    pub num_kv_heads: usize,
    /// Width of each head.
    pub head_dim: usize,
}

/// Where the queries of one attention call sit relative to the keys it may read.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpan {
    /// Absolute position of the first query.
    pub query_start: usize,
    /// Absolute position of the first key in the key tensor.
    pub key_start: usize,
    /// Keys at distance `>= window` behind a query are invisible (Mistral's sliding window).
    pub window: Option<usize>,
    /// Upper bound on the number of attention scores materialised at once (per block of
    /// queries, all heads together); bounds peak memory for long prompts.
    pub max_scores_per_block: usize,
    /// Use the backend's fused attention op where its causal convention provably matches
    /// (the queries are the last positions of the keys) and no window applies.
    pub fused: bool,
}

/// How one pass computes attention: the model's sliding window and the run's kernel choices.
/// [`KvStore`](crate::kv::KvStore)s call it with the keys they make visible.
#[derive(Debug, Clone)]
pub struct AttentionKernel {
    /// The model's sliding window, if any.
    pub window: Option<usize>,
    /// Bound on the scores materialised at once (see [`AttentionSpan::max_scores_per_block`]).
    pub max_scores_per_block: usize,
    /// Whether the backend's fused op may be used where it applies.
    pub fused: bool,
    /// The run's profile, when one is collected.
    pub profile: Option<Arc<Profile>>,
}

impl AttentionKernel {
    /// Runs `f` as profile section `name` (see [`crate::profile`]); just runs it when no profile
    /// is collected.
    pub fn time<T>(&self, name: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
        timed(self.profile.as_deref(), name, device, f)
    }

    fn span(&self, query_start: usize, key_start: usize) -> AttentionSpan {
        AttentionSpan {
            query_start,
            key_start,
            window: self.window,
            max_scores_per_block: self.max_scores_per_block,
            fused: self.fused,
        }
    }

    /// softmax(q·kᵀ/√d + causal mask)·v, `[1, heads, queries, head_dim]`, for queries at
    /// positions `query_start..` over keys at positions `key_start..`.
    pub fn attend(&self, qkv: Qkv, query_start: usize, key_start: usize) -> Tensor<4> {
        if runs_on_host(&qkv.queries.device()) {
            return self.attend_on_host(qkv, query_start, key_start);
        }
        grouped_attention(
            qkv.queries,
            qkv.keys,
            qkv.values,
            self.span(query_start, key_start),
        )
    }

    /// [`attend`](Self::attend) through the CPU kernel ([`crate::cpu::attention`]): the tensors'
    /// values come to the host, the keys are transposed once, the result goes back.
    fn attend_on_host(&self, qkv: Qkv, query_start: usize, key_start: usize) -> Tensor<4> {
        let [_, kv_heads, keys, d] = qkv.keys.dims();
        let mut layer = HostKeysValues::new(kv_heads, d, keys);
        layer.write(qkv.keys, qkv.values, 0);
        let visibility = Visibility {
            query_start,
            key_start,
            window: self.window,
        };
        layer.attend(qkv.queries, keys, visibility)
    }

    /// [`attend`](Self::attend) that also returns, for every query head and key, the attention
    /// probability summed over all queries (`[1, heads, keys]`, f32): H2O's accumulated
    /// attention. It runs the blocked path, since fused kernels never expose the probabilities.
    pub fn attend_with_column_sums(
        &self,
        qkv: Qkv,
        query_start: usize,
        key_start: usize,
    ) -> (Tensor<4>, Tensor<3>) {
        let [batch, heads, _, _] = qkv.queries.dims();
        let num_keys = qkv.keys.dims()[2];
        let device = qkv.queries.device();
        let mut sums = Some(Tensor::<3>::zeros([batch, heads, num_keys], &device).cast(DType::F32));
        let context = blocked_attention_impl(
            qkv.queries,
            qkv.keys,
            qkv.values,
            self.span(query_start, key_start),
            &mut sums,
        );
        (context, sums.expect("the blocked path hands the sums back"))
    }
}

/// Post-RoPE queries and keys and the values of the positions a layer processes, each
/// `[batch, heads or kv_heads, positions, head_dim]`.
#[derive(Debug, Clone)]
pub struct Qkv {
    /// Post-RoPE queries, `[batch, heads, positions, head_dim]`.
    pub queries: Tensor<4>,
    /// Post-RoPE keys, `[batch, kv_heads, positions, head_dim]`.
    pub keys: Tensor<4>,
    /// Values, `[batch, kv_heads, positions, head_dim]`.
    pub values: Tensor<4>,
}

impl Attention {
    /// Uninitialised projections of the given shape (weights are expected to be loaded).
    pub fn new(
        hidden: usize,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        bias: bool,
        device: &Device,
    ) -> Self {
        let projection = |d_in, d_out| Projection::dense(d_in, d_out, bias, device);
        Self {
            q_proj: projection(hidden, num_heads * head_dim),
            k_proj: projection(hidden, num_kv_heads * head_dim),
            v_proj: projection(hidden, num_kv_heads * head_dim),
            o_proj: projection(num_heads * head_dim, hidden),
            num_heads,
            num_kv_heads,
            head_dim,
        }
    }

    /// Queries `[batch, heads, positions, head_dim]` of the normed input `x`, before RoPE.
    pub fn project_queries(&self, x: Tensor<3>) -> Tensor<4> {
        split_heads(self.q_proj.forward(x), self.num_heads, self.head_dim)
    }

    /// Keys `[batch, kv_heads, positions, head_dim]` of the normed input `x`, before RoPE.
    pub fn project_keys(&self, x: Tensor<3>) -> Tensor<4> {
        split_heads(self.k_proj.forward(x), self.num_kv_heads, self.head_dim)
    }

    /// Post-RoPE queries `[batch, heads, positions, head_dim]` of the normed input `x`.
    pub fn queries(&self, x: Tensor<3>, rope: &RopeTables) -> Tensor<4> {
        rope.apply(self.project_queries(x))
    }

    /// Post-RoPE keys `[batch, kv_heads, positions, head_dim]` of the normed input `x`.
    pub fn keys(&self, x: Tensor<3>, rope: &RopeTables) -> Tensor<4> {
        rope.apply(self.project_keys(x))
    }

    /// Values `[batch, kv_heads, positions, head_dim]` of the normed input `x`.
    pub fn values(&self, x: Tensor<3>) -> Tensor<4> {
        split_heads(self.v_proj.forward(x), self.num_kv_heads, self.head_dim)
    }

    /// The output projection of an attention context `[batch, heads, positions, head_dim]`:
    /// heads concatenated, then `o_proj`. Returns `[batch, positions, hidden]`.
    pub fn output(&self, context: Tensor<4>) -> Tensor<3> {
        let [batch, heads, positions, head_dim] = context.dims();
        let merged = context
            .swap_dims(1, 2)
            .reshape([batch, positions, heads * head_dim]);
        self.o_proj.forward(merged)
    }
}

/// `[batch, positions, heads * head_dim]` → `[batch, heads, positions, head_dim]`.
fn split_heads(x: Tensor<3>, heads: usize, head_dim: usize) -> Tensor<4> {
    let [batch, positions, _] = x.dims();
    x.reshape([batch, positions, heads, head_dim])
        .swap_dims(1, 2)
}

/// Repeats each key/value head `groups` times along the head axis (`[b, kv, n, d]` →
/// `[b, kv · groups, n, d]`, query head `h` reading KV head `h / groups`), like transformers'
/// `repeat_kv`.
pub fn repeat_kv(tensor: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return tensor;
    }
    let [batch, kv_heads, positions, head_dim] = tensor.dims();
    tensor
        .unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, groups, positions, head_dim])
        .reshape([batch, kv_heads * groups, positions, head_dim])
}

/// softmax(q·kᵀ/√d + mask)·v for grouped-query attention, processed in blocks of queries so
/// that no more than `span.max_scores_per_block` scores exist at once.
///
/// On the blocked path, query heads sharing a key/value head are stacked along the position
/// axis instead of repeating the keys, so the keys and values are never copied per query head.
pub fn grouped_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    span: AttentionSpan,
) -> Tensor<4> {
    if span.fused && fused_applies(&queries, &keys, &span) {
        return fused_attention(queries, keys, values, span.max_scores_per_block);
    }
    blocked_attention(queries, keys, values, span)
}

/// Whether the fused op's causal convention matches this call. Burn 0.22's attention op (flex,
/// CubeCL flash kernels and the generic fallback alike) aligns causality bottom-right: query `i`
/// of `n_q` sees keys `0..=i + n_k - n_q`. That is ours exactly when the queries are the last
/// positions of the key span and no sliding window cuts in. Single-token decode steps stay on
/// the blocked path, which measured twice as fast there on flex.
fn fused_applies(queries: &Tensor<4>, keys: &Tensor<4>, span: &AttentionSpan) -> bool {
    let num_queries = queries.dims()[2];
    let num_keys = keys.dims()[2];
    span.window.is_none()
        && num_queries > 1
        && num_queries <= num_keys
        && span.query_start + num_queries == span.key_start + num_keys
}

/// Smallest query block of the fused path: below it, repeating the keys and values per block
/// would cost as much as the attention itself.
const FUSED_MIN_ROWS: usize = 256;

/// The backend's fused scaled-dot-product attention (tiled online softmax on flex, flash kernels
/// on CubeCL backends). It is called per block of queries, each over the keys up to its last
/// query, so that a backend whose op materialises the scores (CubeCL's fallback, when no flash
/// kernel fits the shape) holds at most `max(max_scores_per_block, heads · 256 · keys)` of them.
/// Key/value heads are repeated to the query heads, as the op expects equal head counts.
fn fused_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    max_scores_per_block: usize,
) -> Tensor<4> {
    let [_, heads, num_queries, _] = queries.dims();
    let [_, kv_heads, num_keys, _] = keys.dims();
    let groups = heads / kv_heads;
    // `scale: None` is 1/√head_dim; an explicit scale would send CubeCL to its fallback.
    let options = AttentionModuleOptions {
        scale: None,
        softcap: None,
        is_causal: true,
    };
    let past = num_keys - num_queries;
    let rows_per_block = (max_scores_per_block / (heads * num_keys).max(1))
        .max(FUSED_MIN_ROWS)
        .min(num_queries);
    let mut outputs = Vec::with_capacity(num_queries.div_ceil(rows_per_block));
    let mut first = 0;
    while first < num_queries {
        let rows = rows_per_block.min(num_queries - first);
        let visible = past + first + rows;
        let q = if rows == num_queries {
            queries.clone()
        } else {
            queries.clone().narrow(2, first, rows)
        };
        let k = repeat_kv(keys.clone().narrow(2, 0, visible), groups);
        let v = repeat_kv(values.clone().narrow(2, 0, visible), groups);
        outputs.push(burn::tensor::module::attention(
            q, k, v, None, None, options,
        ));
        first += rows;
    }
    if outputs.len() == 1 {
        outputs.pop().expect("one block")
    } else {
        Tensor::cat(outputs, 2)
    }
}

/// Attention in blocks of queries, each materialising at most `max_scores_per_block` scores,
/// with an explicit causal / sliding-window mask.
fn blocked_attention(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    span: AttentionSpan,
) -> Tensor<4> {
    blocked_attention_impl(queries, keys, values, span, &mut None)
}

/// The blocked path, optionally adding each key's probabilities summed over all queries to
/// `column_sums` (`[batch, heads, keys]`, f32).
fn blocked_attention_impl(
    queries: Tensor<4>,
    keys: Tensor<4>,
    values: Tensor<4>,
    span: AttentionSpan,
    column_sums: &mut Option<Tensor<3>>,
) -> Tensor<4> {
    let [batch, heads, num_queries, head_dim] = queries.dims();
    let [_, kv_heads, num_keys, _] = keys.dims();
    let groups = heads / kv_heads;
    let scale = (head_dim as f64).powf(-0.5);
    let dtype = queries.dtype();
    let device = queries.device();

    let rows_per_block =
        (span.max_scores_per_block / (heads * num_keys).max(1)).clamp(1, num_queries);
    let mut outputs = Vec::with_capacity(num_queries.div_ceil(rows_per_block));
    let mut first = 0;
    while first < num_queries {
        let rows = rows_per_block.min(num_queries - first);
        let query_start = span.query_start + first;
        let query_end = query_start + rows; // exclusive, absolute
        // Causality: this block never reads keys at or after `query_end`.
        let key_hi = (query_end - span.key_start).min(num_keys);
        let key_lo = match span.window {
            Some(window) => (query_start + 1)
                .saturating_sub(window)
                .saturating_sub(span.key_start),
            None => 0,
        }
        .min(key_hi);
        let visible = key_hi - key_lo;

        let q = queries.clone().narrow(2, first, rows).reshape([
            batch,
            kv_heads,
            groups * rows,
            head_dim,
        ]);
        let k = keys.clone().narrow(2, key_lo, visible);
        let v = values.clone().narrow(2, key_lo, visible);

        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
        let scores = scores.reshape([batch, kv_heads, groups, rows, visible]);
        let scores = match block_mask(
            query_start,
            rows,
            span.key_start + key_lo,
            visible,
            span.window,
            &device,
        ) {
            Some(mask) => {
                let mask = mask
                    .unsqueeze::<5>()
                    .expand([batch, kv_heads, groups, rows, visible]);
                scores.mask_fill(mask, f32::NEG_INFINITY)
            }
            None => scores,
        };
        let probabilities = softmax(scores.cast(DType::F32), 4);
        if let Some(total) = column_sums.take() {
            let block = probabilities
                .clone()
                .sum_dim(3)
                .reshape([batch, heads, visible]);
            let range = [0..batch, 0..heads, key_lo..key_hi];
            let updated = total.clone().slice(range.clone()) + block;
            *column_sums = Some(total.slice_assign(range, updated));
        }
        let context = probabilities
            .cast(dtype)
            .reshape([batch, kv_heads, groups * rows, visible])
            .matmul(v)
            .reshape([batch, heads, rows, head_dim]);
        outputs.push(context);
        first += rows;
    }
    if outputs.len() == 1 {
        outputs.pop().expect("one block")
    } else {
        Tensor::cat(outputs, 2)
    }
}

/// True where a query (rows, absolute positions `query_start..`) may not see a key (columns,
/// absolute positions `key_start..`); `None` when every key is visible.
fn block_mask(
    query_start: usize,
    rows: usize,
    key_start: usize,
    columns: usize,
    window: Option<usize>,
    device: &Device,
) -> Option<Tensor<2, Bool>> {
    let last_query = query_start + rows - 1;
    let last_key = key_start + columns - 1;
    let future_visible = last_key > query_start;
    let window_cuts = window.is_some_and(|w| key_start + w <= last_query);
    if !future_visible && !window_cuts {
        return None;
    }
    let query_positions =
        Tensor::<1, Int>::arange(query_start as i64..(query_start + rows) as i64, device)
            .reshape([rows, 1])
            .expand([rows, columns]);
    let key_positions =
        Tensor::<1, Int>::arange(key_start as i64..(key_start + columns) as i64, device)
            .reshape([1, columns])
            .expand([rows, columns]);
    let mut mask = key_positions.clone().greater(query_positions.clone());
    if let Some(window) = window {
        // Hidden when query - key >= window, i.e. key <= query - window.
        let too_old = key_positions.lower_equal(query_positions.sub_scalar(window as i64));
        mask = mask.bool_or(too_old);
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData};

    fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Plain reference: every query over every visible key, one full score matrix.
    fn reference(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, span: AttentionSpan) -> Tensor<4> {
        let span = AttentionSpan {
            max_scores_per_block: usize::MAX,
            fused: false,
            ..span
        };
        blocked_attention(q, k, v, span)
    }

    fn max_abs_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let a: TensorData = a.into_data();
        let b: TensorData = b.into_data();
        a.iter::<f32>()
            .zip(b.iter::<f32>())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Every path (fused or blocked, one block or many, from an empty cache or continuing one,
    /// with and without a window) computes the same attention.
    #[test]
    fn all_attention_paths_agree() {
        let device = Device::flex();
        let (heads, kv_heads, head_dim) = (6, 2, 8);
        for (past, new, window) in [
            (0, 37, None),
            (11, 23, None),
            (0, 29, Some(7)),
            (9, 5, Some(4)),
        ] {
            let q = random([1, heads, new, head_dim], &device);
            let k = random([1, kv_heads, past + new, head_dim], &device);
            let v = random([1, kv_heads, past + new, head_dim], &device);
            let span = AttentionSpan {
                query_start: past,
                key_start: 0,
                window,
                max_scores_per_block: usize::MAX,
                fused: false,
            };
            let expected = reference(q.clone(), k.clone(), v.clone(), span);
            for fused in [false, true] {
                for budget in [usize::MAX, heads * (past + new) * 4, 1] {
                    let span = AttentionSpan {
                        max_scores_per_block: budget,
                        fused,
                        ..span
                    };
                    let got = grouped_attention(q.clone(), k.clone(), v.clone(), span);
                    let err = max_abs_diff(got, expected.clone());
                    assert!(
                        err < 1e-5,
                        "past {past}, new {new}, window {window:?}, fused {fused}, budget {budget}: {err}"
                    );
                }
            }
        }
    }
}
