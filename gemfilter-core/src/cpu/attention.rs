//! Causal (optionally windowed) grouped-query attention on host memory: the CPU devices' kernel.
//!
//! Flash-attention style: for a block of query rows (the query heads sharing one key/value head,
//! times a few positions) the keys are visited in tiles of 64; each tile's scores are one small
//! product (keys stored transposed, so the inner loop runs along 64 keys at once), folded into a
//! running softmax (maximum, normaliser) and a running weighted sum of the values. Nothing of
//! size `queries × keys` ever exists; every key and value is read once per query block; all
//! arithmetic is f32 with a vectorised `exp`. Query blocks run in parallel on rayon's pool. The
//! same code is compiled for AVX-512, AVX2 + FMA and the baseline target and picked at run time.

use rayon::prelude::*;

use super::exp_nonpositive;

/// Keys per tile.
const KEY_TILE: usize = 64;
/// Query positions per block (times the query heads of a group).
const QUERY_BLOCK: usize = 16;

/// Keys and values of one key/value head: keys transposed (`[head_dim][stride]`: column `j` is
/// key `j`), values row-major (`[stride][head_dim]`); the first `len` columns/rows are valid.
#[derive(Debug, Clone, Copy)]
pub struct KeysValues<'a> {
    /// Transposed keys, `head_dim × stride`.
    pub keys_t: &'a [f32],
    /// Values, `stride × head_dim`.
    pub values: &'a [f32],
    /// Row/column stride (capacity).
    pub stride: usize,
    /// Valid keys.
    pub len: usize,
}

/// Where queries and keys sit: absolute positions and the model's window.
#[derive(Debug, Clone, Copy)]
pub struct Visibility {
    /// Absolute position of the first query.
    pub query_start: usize,
    /// Absolute position of key 0.
    pub key_start: usize,
    /// Keys at distance `>= window` behind a query are invisible.
    pub window: Option<usize>,
}

impl Visibility {
    /// The visible key range `[lo, hi)` of the query at absolute position `position`.
    fn range(&self, position: usize, len: usize) -> (usize, usize) {
        let hi = (position + 1).saturating_sub(self.key_start).min(len);
        let lo = match self.window {
            Some(w) => (position + 1)
                .saturating_sub(w)
                .saturating_sub(self.key_start),
            None => 0,
        };
        (lo.min(hi), hi)
    }
}

/// Raw output pointer shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: every task writes distinct rows of one buffer that outlives the tasks.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The pointer (a method, so that closures capture the whole `Send + Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// softmax(q·kᵀ·scale + mask)·v for `heads` query heads over `kv.len()` key/value heads (query
/// head `h` reads `kv[h / (heads / kv.len())]`). `queries` is `[heads][positions][head_dim]`; the
/// result, same layout, goes to `out`.
pub fn attention(
    queries: &[f32],
    heads: usize,
    head_dim: usize,
    kv: &[KeysValues<'_>],
    visibility: Visibility,
    scale: f32,
    out: &mut [f32],
) {
    attention_with(
        Isa::detect(),
        queries,
        heads,
        head_dim,
        kv,
        visibility,
        scale,
        out,
    )
}

/// [`attention`] with the kernel compiled for `isa`.
#[allow(clippy::too_many_arguments)]
fn attention_with(
    isa: Isa,
    queries: &[f32],
    heads: usize,
    head_dim: usize,
    kv: &[KeysValues<'_>],
    visibility: Visibility,
    scale: f32,
    out: &mut [f32],
) {
    let positions = queries.len() / (heads * head_dim).max(1);
    assert_eq!(out.len(), queries.len(), "output size");
    assert!(
        !kv.is_empty() && heads.is_multiple_of(kv.len()),
        "heads per KV head"
    );
    let groups = heads / kv.len();
    let blocks = positions.div_ceil(QUERY_BLOCK);
    let keys = kv[0].len;
    // Few query blocks (a decode step: one per KV head) leave cores idle; then each block's keys
    // are split in parts whose partial softmax states are merged afterwards (flash decoding).
    let threads = rayon::current_num_threads();
    let tasks = kv.len() * blocks;
    let splits = if tasks < 2 * threads {
        (2 * threads)
            .div_ceil(tasks)
            .min(keys / MIN_KEYS_PER_SPLIT)
            .max(1)
    } else {
        1
    };
    // Whole tiles per part, so that only the last tile of a row range is partial.
    let part = keys.div_ceil(splits).next_multiple_of(KEY_TILE);
    let work: Vec<(usize, usize, usize)> = (0..kv.len())
        .flat_map(|h| (0..blocks).flat_map(move |b| (0..splits).map(move |s| (h, b, s))))
        .collect();
    let task =
        |&(kv_head, block, split): &(usize, usize, usize)| -> (Vec<(usize, usize)>, BlockState) {
            let first = block * QUERY_BLOCK;
            let count = QUERY_BLOCK.min(positions - first);
            let rows: Vec<(usize, usize)> = (0..groups)
                .flat_map(|g| (first..first + count).map(move |p| (kv_head * groups + g, p)))
                .collect();
            let job = Job {
                queries,
                positions,
                head_dim,
                rows: &rows,
                kv: kv[kv_head],
                keys: (split * part, ((split + 1) * part).min(keys)),
                visibility,
                scale,
            };
            let state = isa.run(&job);
            (rows, state)
        };
    let pairs = (positions as f64) * (keys as f64) * (heads as f64);
    let parallel = work.len() > 1 && pairs >= 32_768.0;
    let output = Output(out.as_mut_ptr());
    let write = |rows: &[(usize, usize)], state: &BlockState| {
        for (row, &(head, p)) in rows.iter().enumerate() {
            let inverse = if state.norm[row] > 0.0 {
                1.0 / state.norm[row]
            } else {
                0.0
            };
            let start = (head * positions + p) * head_dim;
            let acc = &state.acc[row * head_dim..(row + 1) * head_dim];
            for (c, &a) in acc.iter().enumerate() {
                // SAFETY: row (head, p) of the output belongs to one query block, written by
                // one task (or, split, by the merge below alone).
                unsafe { *output.get().add(start + c) = a * inverse };
            }
        }
    };
    if splits == 1 {
        let finish = |item: &(usize, usize, usize)| {
            let (rows, state) = task(item);
            write(&rows, &state);
        };
        if parallel {
            work.par_iter().for_each(finish);
        } else {
            work.iter().for_each(finish);
        }
        return;
    }
    let parts: Vec<(Vec<(usize, usize)>, BlockState)> = if parallel {
        work.par_iter().map(task).collect()
    } else {
        work.iter().map(task).collect()
    };
    for block_parts in parts.chunks(splits) {
        let merged = BlockState::merge(block_parts.iter().map(|(_, state)| state), head_dim);
        write(&block_parts[0].0, &merged);
    }
}

/// Keys below which a block's keys are not split further.
const MIN_KEYS_PER_SPLIT: usize = 256;

/// The running softmax of a query block's rows over some keys: per row the maximum score, the
/// normaliser `Σ e^(s − max)` and the unnormalised weighted sum of values.
struct BlockState {
    max: Vec<f32>,
    norm: Vec<f32>,
    acc: Vec<f32>,
}

impl BlockState {
    /// The state over the union of the parts' keys (parts of one block, same rows).
    fn merge<'a>(parts: impl Iterator<Item = &'a BlockState> + Clone, head_dim: usize) -> Self {
        let first = parts.clone().next().expect("at least one part");
        let rows = first.max.len();
        let mut merged = BlockState {
            max: vec![f32::NEG_INFINITY; rows],
            norm: vec![0.0; rows],
            acc: vec![0.0; rows * head_dim],
        };
        for row in 0..rows {
            let max = parts
                .clone()
                .map(|p| p.max[row])
                .fold(f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                continue; // no visible key in any part
            }
            merged.max[row] = max;
            for part in parts.clone() {
                if part.max[row] == f32::NEG_INFINITY {
                    continue;
                }
                let weight = exp_nonpositive(part.max[row] - max);
                merged.norm[row] += weight * part.norm[row];
                let acc = &mut merged.acc[row * head_dim..(row + 1) * head_dim];
                for (m, &a) in acc.iter_mut().zip(&part.acc[row * head_dim..]) {
                    *m += weight * a;
                }
            }
        }
        merged
    }
}

/// One query block's work.
struct Job<'a> {
    queries: &'a [f32],
    positions: usize,
    head_dim: usize,
    /// `(query head, position index)` of every row of the block.
    rows: &'a [(usize, usize)],
    kv: KeysValues<'a>,
    /// The key range `[lo, hi)` this job covers (all keys, or one split's part).
    keys: (usize, usize),
    visibility: Visibility,
    scale: f32,
}

/// The instruction set the kernel was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    /// This CPU's instruction sets, best last.
    #[cfg(test)]
    fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                all.push(Isa::Avx512);
            }
        }
        all
    }

    fn run(self, job: &Job<'_>) -> BlockState {
        // SAFETY (every arm): chosen only when the CPU has the features.
        match (self, job.head_dim) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 64) => unsafe { x86::avx512_64(job) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, 128) => unsafe { x86::avx512_128(job) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 64) => unsafe { x86::avx2_64(job) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, 128) => unsafe { x86::avx2_128(job) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2 | Isa::Avx512, _) => unsafe { x86::fma_any(job) },
            _ => flash_block::<GenericRows<false>>(job),
        }
    }
}

/// `a·b + c`, fused where the instruction set has FMA (`FMA`), else a multiply and an add (a
/// fused call without the instruction would go through libm).
#[inline(always)]
fn multiply_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// Lanes of the blocked reductions below (a multiple of every vector width used).
const LANES: usize = 16;

/// Maximum of `values`, in `LANES` independent lanes so that it vectorises.
#[inline(always)]
fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    lanes.iter().copied().fold(tail, f32::max)
}

/// Sum of `values`, in `LANES` independent lanes so that it vectorises.
#[inline(always)]
fn sum_of(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// What the flash loop does with one row and one key tile: scores, online softmax, weighted
/// values.
trait RowTile {
    /// Folds keys `tile_start..tile_start + tile` (those in `visible` relative to the tile)
    /// into the row's running maximum, normaliser and weighted sum `acc`.
    #[allow(clippy::too_many_arguments)]
    fn row_tile(
        query: &[f32],
        kv: &KeysValues<'_>,
        tile_start: usize,
        tile: usize,
        visible: (usize, usize),
        scale: f32,
        state: RowState<'_>,
        scratch: &mut [f32; KEY_TILE],
    );

    /// Folds one whole tile (`KEY_TILE` keys from `tile_start`, every one visible to every row)
    /// into up to [`JOINT_ROWS`] consecutive rows of a block at once: `max`, `norm` and `acc`
    /// are those rows' slices. The default takes the rows one by one.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn rows_full_tile(
        queries: &[&[f32]],
        kv: &KeysValues<'_>,
        tile_start: usize,
        scale: f32,
        max: &mut [f32],
        norm: &mut [f32],
        acc: &mut [f32],
        scratch: &mut [[f32; KEY_TILE]; JOINT_ROWS],
    ) {
        let d = queries[0].len();
        for (r, query) in queries.iter().enumerate() {
            Self::row_tile(
                query,
                kv,
                tile_start,
                KEY_TILE,
                (0, KEY_TILE),
                scale,
                RowState {
                    max: &mut max[r],
                    norm: &mut norm[r],
                    acc: &mut acc[r * d..(r + 1) * d],
                },
                &mut scratch[0],
            );
        }
    }
}

/// Rows a kernel may take through one tile together (sharing every key and value load).
const JOINT_ROWS: usize = 4;

/// The running softmax of one query row.
struct RowState<'a> {
    max: &'a mut f32,
    norm: &'a mut f32,
    acc: &'a mut [f32],
}

/// Portable rows: loops the compiler vectorises as it can.
struct GenericRows<const FMA: bool>;

impl<const FMA: bool> RowTile for GenericRows<FMA> {
    #[inline(always)]
    fn row_tile(
        query: &[f32],
        kv: &KeysValues<'_>,
        tile_start: usize,
        tile: usize,
        (visible_lo, visible_hi): (usize, usize),
        scale: f32,
        state: RowState<'_>,
        scratch: &mut [f32; KEY_TILE],
    ) {
        let d = query.len();
        let s = &mut scratch[..tile];
        s.fill(0.0);
        for (c, &qc) in query.iter().enumerate() {
            let k = &kv.keys_t[c * kv.stride + tile_start..c * kv.stride + tile_start + tile];
            for (sj, &kj) in s.iter_mut().zip(k) {
                *sj = multiply_add::<FMA>(qc, kj, *sj);
            }
        }
        for sj in s.iter_mut() {
            *sj *= scale;
        }
        s[..visible_lo].fill(f32::NEG_INFINITY);
        s[visible_hi..].fill(f32::NEG_INFINITY);
        let new_max = state.max.max(max_of(s));
        let correction = exp_nonpositive(*state.max - new_max);
        for sj in s.iter_mut() {
            *sj = exp_nonpositive(*sj - new_max);
        }
        *state.norm = *state.norm * correction + sum_of(s);
        *state.max = new_max;
        if correction != 1.0 {
            for x in state.acc.iter_mut() {
                *x *= correction;
            }
        }
        let values = &kv.values[(tile_start + visible_lo) * d..(tile_start + visible_hi) * d];
        for (&p, v) in s[visible_lo..visible_hi].iter().zip(values.chunks_exact(d)) {
            for (x, &vc) in state.acc.iter_mut().zip(v) {
                *x = multiply_add::<FMA>(p, vc, *x);
            }
        }
    }
}

/// The flash loop over one query block, generic over how a row meets a tile; inlined into each
/// instruction-set wrapper.
#[inline(always)]
fn flash_block<R: RowTile>(job: &Job<'_>) -> BlockState {
    let d = job.head_dim;
    let rows = job.rows.len();
    let kv = job.kv;
    let mut max = vec![f32::NEG_INFINITY; rows];
    let mut norm = vec![0.0f32; rows];
    let mut acc = vec![0.0f32; rows * d];
    let mut scratch = [0.0f32; KEY_TILE];
    // Each row's visible keys within this job's key range; the block visits their union.
    let ranges: Vec<(usize, usize)> = job
        .rows
        .iter()
        .map(|&(_, p)| {
            let (lo, hi) = job.visibility.range(job.visibility.query_start + p, kv.len);
            let (lo, hi) = (lo.max(job.keys.0), hi.min(job.keys.1));
            (lo.min(hi), hi)
        })
        .collect();
    let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
    let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let mut joint_scratch = [[0.0f32; KEY_TILE]; JOINT_ROWS];
    let mut tile_start = lo;
    while tile_start < hi {
        let tile = KEY_TILE.min(hi - tile_start);
        let mut row = 0;
        while row < rows {
            let end = (row + JOINT_ROWS).min(rows);
            // Rows that see the whole tile go through it together.
            let whole = tile == KEY_TILE
                && end - row > 1
                && ranges[row..end]
                    .iter()
                    .all(|&(lo, hi)| lo <= tile_start && hi >= tile_start + KEY_TILE);
            if whole {
                let queries: Vec<&[f32]> = job.rows[row..end]
                    .iter()
                    .map(|&(head, p)| {
                        let start = (head * job.positions + p) * d;
                        &job.queries[start..start + d]
                    })
                    .collect();
                R::rows_full_tile(
                    &queries,
                    &kv,
                    tile_start,
                    job.scale,
                    &mut max[row..end],
                    &mut norm[row..end],
                    &mut acc[row * d..end * d],
                    &mut joint_scratch,
                );
                row = end;
                continue;
            }
            let (row_lo, row_hi) = ranges[row];
            // The row's visible part of the tile; a row with none skips it.
            let visible_lo = row_lo.max(tile_start).min(tile_start + tile) - tile_start;
            let visible_hi = row_hi.min(tile_start + tile).max(tile_start) - tile_start;
            if visible_lo < visible_hi {
                let (head, p) = job.rows[row];
                let start = (head * job.positions + p) * d;
                R::row_tile(
                    &job.queries[start..start + d],
                    &kv,
                    tile_start,
                    tile,
                    (visible_lo, visible_hi),
                    job.scale,
                    RowState {
                        max: &mut max[row],
                        norm: &mut norm[row],
                        acc: &mut acc[row * d..(row + 1) * d],
                    },
                    &mut scratch,
                );
            }
            row += 1;
        }
        tile_start += tile;
    }
    BlockState { max, norm, acc }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Explicit vectors for the common head widths (64, 128): the tile's 64 scores and the row's
    //! weighted sum stay in registers.

    use std::arch::x86_64::*;

    use super::*;

    /// The vector operations the rows need, implemented for 512- and 256-bit registers.
    ///
    /// Every method is `unsafe`: it may only run on a CPU with the register's features
    /// (`avx512f` / `avx2` + `fma`), and `load`/`store` need `LANES` valid floats at `p`.
    pub(super) trait Vector: Copy {
        const LANES: usize;
        unsafe fn zero() -> Self;
        unsafe fn splat(x: f32) -> Self;
        unsafe fn load(p: *const f32) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// `a·b + c`.
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn sub(a: Self, b: Self) -> Self;
        unsafe fn mul(a: Self, b: Self) -> Self;
        unsafe fn max(a: Self, b: Self) -> Self;
        /// `2^n` per lane, where `t = n + 1.5·2^23` holds the integer `n` in its low mantissa
        /// bits (the rounding trick of [`exp_nonpositive`]).
        unsafe fn pow2_of_rounded(t: Self) -> Self;

        unsafe fn reduce_max(self) -> f32 {
            let mut lanes = [0.0f32; 16];
            unsafe { self.store(lanes.as_mut_ptr()) };
            lanes[..Self::LANES]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
        }

        unsafe fn reduce_add(self) -> f32 {
            let mut lanes = [0.0f32; 16];
            unsafe { self.store(lanes.as_mut_ptr()) };
            lanes[..Self::LANES].iter().sum()
        }

        /// `e^x` for `x ≤ 0`, as [`exp_nonpositive`] lane by lane.
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            unsafe {
                let round = Self::splat(12_582_912.0);
                let x = Self::max(self, Self::splat(-87.0));
                let t = Self::fma(x, Self::splat(std::f32::consts::LOG2_E), round);
                let n = Self::sub(t, round);
                let r = Self::fma(n, Self::splat(-0.693_359_4), x);
                let r = Self::fma(n, Self::splat(2.121_944_4e-4), r);
                let mut p = Self::splat(1.987_569_1e-4);
                p = Self::fma(p, r, Self::splat(1.398_199_9e-3));
                p = Self::fma(p, r, Self::splat(8.333_452e-3));
                p = Self::fma(p, r, Self::splat(4.166_579_6e-2));
                p = Self::fma(p, r, Self::splat(0.166_666_65));
                p = Self::fma(p, r, Self::splat(0.5));
                p = Self::fma(p, Self::mul(r, r), r);
                p = Self::add(p, Self::splat(1.0));
                Self::mul(p, Self::pow2_of_rounded(t))
            }
        }
    }

    /// The exponent bits of `2^n` from `t = n + 1.5·2^23`: `t`'s bits minus those of `1.5·2^23`,
    /// plus the bias 127.
    const POW2_OFFSET: i32 = 0x4B40_0000 - 127;

    impl Vector for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm512_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { _mm512_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            unsafe { _mm512_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            unsafe { _mm512_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            unsafe { _mm512_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            unsafe {
                let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(POW2_OFFSET));
                _mm512_castsi512_ps(_mm512_slli_epi32(bits, 23))
            }
        }
        #[inline(always)]
        unsafe fn reduce_max(self) -> f32 {
            unsafe { _mm512_reduce_max_ps(self) }
        }
        #[inline(always)]
        unsafe fn reduce_add(self) -> f32 {
            unsafe { _mm512_reduce_add_ps(self) }
        }
    }

    impl Vector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn splat(x: f32) -> Self {
            unsafe { _mm256_set1_ps(x) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            unsafe { _mm256_add_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn sub(a: Self, b: Self) -> Self {
            unsafe { _mm256_sub_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn mul(a: Self, b: Self) -> Self {
            unsafe { _mm256_mul_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn max(a: Self, b: Self) -> Self {
            unsafe { _mm256_max_ps(a, b) }
        }
        #[inline(always)]
        unsafe fn pow2_of_rounded(t: Self) -> Self {
            unsafe {
                let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(POW2_OFFSET));
                _mm256_castsi256_ps(_mm256_slli_epi32(bits, 23))
            }
        }
    }

    /// Rows in explicit vectors: `NK` vectors hold a tile's 64 scores, `ND` the row's weighted
    /// sum (`head_dim = ND · LANES`). Partial tiles go the portable way.
    pub(super) struct SimdRows<V, const NK: usize, const ND: usize>(std::marker::PhantomData<V>);

    impl<V: Vector, const NK: usize, const ND: usize> RowTile for SimdRows<V, NK, ND> {
        #[inline(always)]
        fn rows_full_tile(
            queries: &[&[f32]],
            kv: &KeysValues<'_>,
            tile_start: usize,
            scale: f32,
            max: &mut [f32],
            norm: &mut [f32],
            acc: &mut [f32],
            scratch: &mut [[f32; KEY_TILE]; JOINT_ROWS],
        ) {
            // Accumulators must fit the register file: 32 vectors with AVX-512 (4 rows of a
            // 64-wide head, 2 of a 128-wide one), 16 with AVX2 (one row at a time).
            let args = (queries, kv, tile_start, scale);
            match (V::LANES, ND, queries.len()) {
                (16, 4, 4) => {
                    Self::joint::<4>(args.0, args.1, args.2, args.3, max, norm, acc, scratch)
                }
                (16, 4, 3) => {
                    Self::joint::<3>(args.0, args.1, args.2, args.3, max, norm, acc, scratch)
                }
                (16, 4 | 8, 2) => {
                    Self::joint::<2>(args.0, args.1, args.2, args.3, max, norm, acc, scratch)
                }
                (16, 8, n) if n > 2 => {
                    Self::joint::<2>(
                        &queries[..2],
                        kv,
                        tile_start,
                        scale,
                        &mut max[..2],
                        &mut norm[..2],
                        &mut acc[..2 * ND * 16],
                        scratch,
                    );
                    let rest = &queries[2..];
                    let d = ND * 16;
                    Self::rows_full_tile(
                        rest,
                        kv,
                        tile_start,
                        scale,
                        &mut max[2..],
                        &mut norm[2..],
                        &mut acc[2 * d..],
                        scratch,
                    )
                }
                _ => {
                    let d = queries[0].len();
                    for (r, query) in queries.iter().enumerate() {
                        Self::row_tile(
                            query,
                            kv,
                            tile_start,
                            KEY_TILE,
                            (0, KEY_TILE),
                            scale,
                            RowState {
                                max: &mut max[r],
                                norm: &mut norm[r],
                                acc: &mut acc[r * d..(r + 1) * d],
                            },
                            &mut scratch[0],
                        );
                    }
                }
            }
        }

        #[inline(always)]
        fn row_tile(
            query: &[f32],
            kv: &KeysValues<'_>,
            tile_start: usize,
            tile: usize,
            (visible_lo, visible_hi): (usize, usize),
            scale: f32,
            state: RowState<'_>,
            scratch: &mut [f32; KEY_TILE],
        ) {
            if tile != KEY_TILE {
                return GenericRows::<true>::row_tile(
                    query,
                    kv,
                    tile_start,
                    tile,
                    (visible_lo, visible_hi),
                    scale,
                    state,
                    scratch,
                );
            }
            let d = query.len();
            // SAFETY (whole body): the caller runs this under the vector's target features; a
            // full tile's keys `tile_start..tile_start + 64` exist in every key row, and the
            // value rows of the visible keys exist.
            unsafe {
                let mut scores = [V::zero(); NK];
                let keys = kv.keys_t.as_ptr().add(tile_start);
                for (c, &qc) in query.iter().enumerate() {
                    let q = V::splat(qc);
                    let row = keys.add(c * kv.stride);
                    for (k, s) in scores.iter_mut().enumerate() {
                        *s = V::fma(q, V::load(row.add(k * V::LANES)), *s);
                    }
                }
                let scale = V::splat(scale);
                for s in scores.iter_mut() {
                    *s = V::mul(*s, scale);
                }
                if visible_lo > 0 || visible_hi < KEY_TILE {
                    for (k, s) in scores.iter().enumerate() {
                        s.store(scratch.as_mut_ptr().add(k * V::LANES));
                    }
                    scratch[..visible_lo].fill(f32::NEG_INFINITY);
                    scratch[visible_hi..].fill(f32::NEG_INFINITY);
                    for (k, s) in scores.iter_mut().enumerate() {
                        *s = V::load(scratch.as_ptr().add(k * V::LANES));
                    }
                }
                let mut tile_max = scores[0];
                for s in &scores[1..] {
                    tile_max = V::max(tile_max, *s);
                }
                let new_max = state.max.max(tile_max.reduce_max());
                let correction = exp_nonpositive(*state.max - new_max);
                let shift = V::splat(-new_max);
                let mut total = V::zero();
                for s in scores.iter_mut() {
                    *s = V::exp(V::add(*s, shift));
                    total = V::add(total, *s);
                }
                *state.norm = *state.norm * correction + total.reduce_add();
                *state.max = new_max;
                for (k, s) in scores.iter().enumerate() {
                    s.store(scratch.as_mut_ptr().add(k * V::LANES));
                }
                let mut acc = [V::zero(); ND];
                let correction = V::splat(correction);
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = V::mul(V::load(state.acc.as_ptr().add(i * V::LANES)), correction);
                }
                let values = kv.values.as_ptr().add(tile_start * d);
                let weights = scratch.as_ptr();
                for j in visible_lo..visible_hi {
                    let p = V::splat(*weights.add(j));
                    let v = values.add(j * d);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = V::fma(p, V::load(v.add(i * V::LANES)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    a.store(state.acc.as_mut_ptr().add(i * V::LANES));
                }
            }
        }
    }

    impl<V: Vector, const NK: usize, const ND: usize> SimdRows<V, NK, ND> {
        /// [`RowTile::rows_full_tile`] for exactly `R` rows: every key row and value row is
        /// loaded once for all of them, and the `R × NK` score and `R × ND` sum accumulators
        /// are independent chains the FMA units overlap.
        #[inline(always)]
        #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
        fn joint<const R: usize>(
            queries: &[&[f32]],
            kv: &KeysValues<'_>,
            tile_start: usize,
            scale: f32,
            max: &mut [f32],
            norm: &mut [f32],
            acc: &mut [f32],
            weights: &mut [[f32; KEY_TILE]; JOINT_ROWS],
        ) {
            let d = queries[0].len();
            assert!(queries.len() == R && R <= JOINT_ROWS && d == ND * V::LANES);
            assert!(max.len() == R && norm.len() == R && acc.len() == R * d);
            // SAFETY (whole body): run under the vector's target features; the tile's 64 keys
            // exist in every key row (`tile_start + 64 <= len`), and so do their value rows.
            unsafe {
                let mut scores = [[V::zero(); NK]; R];
                let keys = kv.keys_t.as_ptr().add(tile_start);
                for c in 0..d {
                    let row = keys.add(c * kv.stride);
                    let mut k = [V::zero(); NK];
                    for i in 0..NK {
                        k[i] = V::load(row.add(i * V::LANES));
                    }
                    for r in 0..R {
                        let q = V::splat(*queries[r].get_unchecked(c));
                        for i in 0..NK {
                            scores[r][i] = V::fma(q, k[i], scores[r][i]);
                        }
                    }
                }
                let scale = V::splat(scale);
                let mut corrections = [0.0f32; R];
                for r in 0..R {
                    for i in 0..NK {
                        scores[r][i] = V::mul(scores[r][i], scale);
                    }
                    let mut tile_max = scores[r][0];
                    for i in 1..NK {
                        tile_max = V::max(tile_max, scores[r][i]);
                    }
                    let new_max = max[r].max(tile_max.reduce_max());
                    corrections[r] = exp_nonpositive(max[r] - new_max);
                    let shift = V::splat(-new_max);
                    let mut total = V::zero();
                    for i in 0..NK {
                        let e = V::exp(V::add(scores[r][i], shift));
                        total = V::add(total, e);
                        e.store(weights[r].as_mut_ptr().add(i * V::LANES));
                    }
                    norm[r] = norm[r] * corrections[r] + total.reduce_add();
                    max[r] = new_max;
                }
                let mut sums = [[V::zero(); ND]; R];
                for r in 0..R {
                    let correction = V::splat(corrections[r]);
                    for i in 0..ND {
                        sums[r][i] =
                            V::mul(V::load(acc.as_ptr().add(r * d + i * V::LANES)), correction);
                    }
                }
                let values = kv.values.as_ptr().add(tile_start * d);
                for j in 0..KEY_TILE {
                    let v = values.add(j * d);
                    let mut row = [V::zero(); ND];
                    for i in 0..ND {
                        row[i] = V::load(v.add(i * V::LANES));
                    }
                    for r in 0..R {
                        let p = V::splat(weights[r][j]);
                        for i in 0..ND {
                            sums[r][i] = V::fma(p, row[i], sums[r][i]);
                        }
                    }
                }
                for r in 0..R {
                    for i in 0..ND {
                        sums[r][i].store(acc.as_mut_ptr().add(r * d + i * V::LANES));
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512_64(job: &Job<'_>) -> BlockState {
        flash_block::<SimdRows<__m512, 4, 4>>(job)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512_128(job: &Job<'_>) -> BlockState {
        flash_block::<SimdRows<__m512, 4, 8>>(job)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_64(job: &Job<'_>) -> BlockState {
        flash_block::<SimdRows<__m256, 8, 8>>(job)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_128(job: &Job<'_>) -> BlockState {
        flash_block::<SimdRows<__m256, 8, 16>>(job)
    }

    /// Other head widths: the portable rows, with FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_any(job: &Job<'_>) -> BlockState {
        flash_block::<GenericRows<true>>(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// Plain softmax attention in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        kv_heads: usize,
        d: usize,
        positions: usize,
        keys: usize,
        visibility: Visibility,
    ) -> Vec<f32> {
        let groups = heads / kv_heads;
        let scale = (d as f64).powf(-0.5);
        let mut out = vec![0.0f32; q.len()];
        for h in 0..heads {
            let g = h / groups;
            for p in 0..positions {
                let (lo, hi) = visibility.range(visibility.query_start + p, keys);
                let qv = &q[(h * positions + p) * d..][..d];
                let scores: Vec<f64> = (lo..hi)
                    .map(|j| {
                        let kv = &k[(g * keys + j) * d..][..d];
                        qv.iter()
                            .zip(kv)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let total: f64 = e.iter().sum();
                for c in 0..d {
                    let x: f64 = (lo..hi)
                        .zip(&e)
                        .map(|(j, w)| w * v[(g * keys + j) * d + c] as f64)
                        .sum();
                    out[(h * positions + p) * d + c] =
                        if total > 0.0 { (x / total) as f32 } else { 0.0 };
                }
            }
        }
        out
    }

    #[test]
    fn matches_plain_attention() {
        for (heads, kv_heads, d, positions, past, window) in [
            (4, 2, 16, 37, 0, None),
            (9, 3, 64, 1, 130, None),
            (6, 2, 8, 70, 11, Some(7)),
            (4, 4, 32, 5, 300, Some(64)),
            (4, 2, 128, 20, 100, None),
            // Prefill blocks of a 64-wide head: rows go through whole tiles together.
            (8, 2, 64, 150, 0, None),
            (8, 2, 64, 100, 50, Some(90)),
            // One KV head and one query: the keys are split across tasks and merged.
            (2, 1, 64, 1, 1000, None),
            (4, 1, 64, 1, 1500, Some(300)),
            (3, 1, 128, 2, 2000, None),
        ] {
            let keys = past + positions;
            let q = values(heads * positions * d, 1);
            let k = values(kv_heads * keys * d, 2);
            let v = values(kv_heads * keys * d, 3);
            let visibility = Visibility {
                query_start: past,
                key_start: 0,
                window,
            };
            let expected = reference(&q, &k, &v, heads, kv_heads, d, positions, keys, visibility);
            // Transposed keys with a capacity larger than the keys.
            let stride = keys + 5;
            let mut keys_t = vec![0.0f32; kv_heads * d * stride];
            let mut vals = vec![0.0f32; kv_heads * stride * d];
            for g in 0..kv_heads {
                for j in 0..keys {
                    for c in 0..d {
                        keys_t[g * d * stride + c * stride + j] = k[(g * keys + j) * d + c];
                        vals[g * stride * d + j * d + c] = v[(g * keys + j) * d + c];
                    }
                }
            }
            let kv: Vec<KeysValues<'_>> = (0..kv_heads)
                .map(|g| KeysValues {
                    keys_t: &keys_t[g * d * stride..(g + 1) * d * stride],
                    values: &vals[g * stride * d..(g + 1) * stride * d],
                    stride,
                    len: keys,
                })
                .collect();
            for isa in Isa::available() {
                let mut out = vec![0.0f32; q.len()];
                let scale = (d as f32).powf(-0.5);
                attention_with(isa, &q, heads, d, &kv, visibility, scale, &mut out);
                let error = out
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    error < 2e-5,
                    "{isa:?} {heads}/{kv_heads}×{d}, {positions} after {past}: {error}"
                );
            }
        }
    }
}

#[cfg(test)]
mod timing {
    use super::*;
    #[test]
    #[ignore]
    fn time_decode_step() {
        let (heads, kv_heads, d, n) = (9, 3, 64, 1024);
        let q = vec![0.01f32; heads * d];
        let keys_t = vec![0.02f32; kv_heads * d * n];
        let vals = vec![0.03f32; kv_heads * n * d];
        let kv: Vec<KeysValues<'_>> = (0..kv_heads)
            .map(|g| KeysValues {
                keys_t: &keys_t[g * d * n..(g + 1) * d * n],
                values: &vals[g * n * d..(g + 1) * n * d],
                stride: n,
                len: n,
            })
            .collect();
        let mut out = vec![0.0f32; q.len()];
        let vis = Visibility {
            query_start: n - 1,
            key_start: 0,
            window: None,
        };
        for _ in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..1000 {
                attention(&q, heads, d, &kv, vis, 0.125, &mut out);
            }
            println!(
                "decode step, one layer: {:.1} µs",
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        rayon::scope(|_| {
            let t = std::time::Instant::now();
            for _ in 0..1000 {
                attention(&q, heads, d, &kv, vis, 0.125, &mut out);
            }
            println!("on a worker: {:.1} µs", t.elapsed().as_secs_f64() * 1e3);
        });
    }

    #[test]
    #[ignore]
    fn time_prefill_layer() {
        let (heads, kv_heads, d, n) = (9, 3, 64, 4019);
        let q = vec![0.01f32; heads * n * d];
        let keys_t = vec![0.02f32; kv_heads * d * n];
        let vals = vec![0.03f32; kv_heads * n * d];
        let kv: Vec<KeysValues<'_>> = (0..kv_heads)
            .map(|g| KeysValues {
                keys_t: &keys_t[g * d * n..(g + 1) * d * n],
                values: &vals[g * n * d..(g + 1) * n * d],
                stride: n,
                len: n,
            })
            .collect();
        let mut out = vec![0.0f32; q.len()];
        let vis = Visibility {
            query_start: 0,
            key_start: 0,
            window: None,
        };
        for _ in 0..3 {
            let t = std::time::Instant::now();
            attention(&q, heads, d, &kv, vis, 0.125, &mut out);
            println!("layer: {:.3} s", t.elapsed().as_secs_f64());
        }
    }
}
