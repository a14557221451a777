//! The CPU matrix product over packed blocks: `y = x · Wᵀ` with `W` in `Q8_0` / `Q4_0` / `Q4_1`
//! ([`InterleavedMatrix`] layout).
//!
//! The design is llama.cpp's: the activations are quantised to 8 bits per block of 32 (one f32
//! scale and the block's integer sum), every block pair is an integer dot product, and the
//! per-block scales turn it into f32. Nothing is dequantised to f32 on the way, so a decode step
//! streams the packed bytes once.
//!
//! The weight layout puts 16 output rows in the lanes of one vector: a 64-byte load holds 4
//! columns of 16 rows, and one `vpdpbusd` against 4 broadcast activation bytes adds 64 products
//! into 16 per-row sums, so no horizontal reduction is ever needed. A tile is one 16-row group
//! against up to 8 activation rows (every weight load serves all of them); tasks own ranges of row
//! groups and run on rayon's pool. The inner loops exist in three instruction sets, picked once at
//! run time: AVX-512 VNNI, AVX2 (`vpmaddubsw` + `vpmaddwd`, 8 rows per 256-bit half), and portable
//! Rust (aarch64 included). `GEMFILTER_QUANT_KERNEL=scalar|avx2|vnni` forces one (for tests and
//! measurements).

use std::sync::OnceLock;

use half::f16;
use rayon::prelude::*;

use super::format::{BLOCK, QuantFormat};
use super::interleaved::{GROUP_ROWS, InterleavedMatrix, group_block_bytes, values_offset};

/// Activations quantised to 8 bits per block of 32: `x ≈ d · q`, with `Σ q` kept per block.
#[derive(Debug, Clone)]
pub struct QuantizedActivations {
    rows: usize,
    blocks: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
}

/// Adding then subtracting 1.5·2^23 rounds an f32 of magnitude below 2^22 to the nearest
/// integer, ties to even.
const ROUNDING_MAGIC: f32 = 12_582_912.0;

impl QuantizedActivations {
    /// Quantises `x` (`rows × cols`, row-major; `cols` a multiple of 32).
    pub fn new(x: &[f32], rows: usize, cols: usize) -> Self {
        debug_assert_eq!(x.len(), rows * cols);
        debug_assert_eq!(cols % BLOCK, 0);
        let blocks = cols / BLOCK;
        let mut values = vec![0i8; rows * cols];
        let mut scales = vec![0.0f32; rows * blocks];
        let mut sums = vec![0i32; rows * blocks];
        // One row: (its values, its int8 codes), (its block scales, its block sums).
        type RowParts<'a> = ((&'a [f32], &'a mut [i8]), (&'a mut [f32], &'a mut [i32]));
        let quantize_row = |((x, q), (d, s)): RowParts<'_>| {
            for b in 0..blocks {
                let xb = &x[b * BLOCK..(b + 1) * BLOCK];
                let qb = &mut q[b * BLOCK..(b + 1) * BLOCK];
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                let mut sum = 0i32;
                for (qv, &xv) in qb.iter_mut().zip(xb) {
                    // Round half to even by the 1.5·2^23 trick (|x·inverse| ≤ 127), which
                    // vectorises on every target, unlike `round_ties_even` without SSE4.1.
                    let v = ((xv * inverse + ROUNDING_MAGIC) - ROUNDING_MAGIC) as i8;
                    *qv = v;
                    sum += v as i32;
                }
                d[b] = scale;
                s[b] = sum;
            }
        };
        if rows * cols >= PARALLEL_MIN_ELEMENTS {
            x.par_chunks(cols)
                .zip(values.par_chunks_mut(cols))
                .zip(
                    scales
                        .par_chunks_mut(blocks)
                        .zip(sums.par_chunks_mut(blocks)),
                )
                .for_each(quantize_row);
        } else {
            x.chunks(cols)
                .zip(values.chunks_mut(cols))
                .zip(scales.chunks_mut(blocks).zip(sums.chunks_mut(blocks)))
                .for_each(quantize_row);
        }
        Self {
            rows,
            blocks,
            values,
            scales,
            sums,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The values, scale and sum of block `block` of row `row`.
    pub(crate) fn block(&self, row: usize, block: usize) -> (&[i8], f32, i32) {
        let i = row * self.blocks + block;
        (
            &self.values[i * BLOCK..(i + 1) * BLOCK],
            self.scales[i],
            self.sums[i],
        )
    }
}

/// Below this many activation elements, quantising them is not worth a parallel split.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;
/// Fewest multiply-adds a parallel task gets (smaller products run on one thread).
const MIN_TASK_MACS: usize = 1 << 17;
/// Activation rows per tile: every weight load serves all of them.
const TILE_COLUMNS: usize = 8;

/// The instruction set of the inner loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW) with VNNI.
    Vnni,
}

impl Kernel {
    /// The best the CPU offers, unless `GEMFILTER_QUANT_KERNEL` forces one it supports.
    pub fn detect() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let available = Kernel::available();
            let best = *available.last().unwrap_or(&Kernel::Scalar);
            let Ok(name) = std::env::var("GEMFILTER_QUANT_KERNEL") else {
                return best;
            };
            let forced = available
                .iter()
                .copied()
                .find(|k| k.name().eq_ignore_ascii_case(name.trim()));
            forced.unwrap_or_else(|| {
                // A debugging knob read once per process: say that it was not honoured.
                let names: Vec<&str> = available.iter().map(|k| k.name()).collect();
                eprintln!(
                    "warning: GEMFILTER_QUANT_KERNEL={name} is not one of this CPU's kernels ({}); using {}",
                    names.join(", "),
                    best.name()
                );
                best
            })
        })
    }

    /// The kernels this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                kernels.push(Kernel::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    kernels.push(Kernel::Vnni);
                }
            }
        }
        kernels
    }

    /// `scalar`, `avx2` or `vnni`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Vnni => "vnni",
        }
    }
}

/// Raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct Output(*mut f32);
// SAFETY: tasks write disjoint (row, column) elements of one buffer that outlives them.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

/// `out[m × rows] = x · Wᵀ` for activations already quantised, with `kernel`.
pub fn matmul_into(
    weight: &InterleavedMatrix,
    x: &QuantizedActivations,
    out: &mut [f32],
    kernel: Kernel,
) {
    let n = weight.rows();
    let m = x.rows;
    assert_eq!(out.len(), m * n, "output of {m} × {n}");
    assert_eq!(x.blocks, weight.blocks(), "activation width");
    let out_ptr = Output(out.as_mut_ptr());
    let groups = weight.groups();
    // Enough tasks to balance the pool, each worth waking a thread for.
    let threads = rayon::current_num_threads().max(1);
    let group_macs = GROUP_ROWS * m * weight.cols();
    let groups_per_task = groups
        .div_ceil(threads * 4)
        .max(MIN_TASK_MACS.div_ceil(group_macs.max(1)))
        .max(1);
    let tasks = groups.div_ceil(groups_per_task);
    let run = |task: usize| {
        let first = task * groups_per_task;
        let last = ((task + 1) * groups_per_task).min(groups);
        run_groups(weight, x, first..last, out_ptr, kernel);
    };
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Output columns of row groups `groups`, every activation row.
fn run_groups(
    weight: &InterleavedMatrix,
    x: &QuantizedActivations,
    groups: std::ops::Range<usize>,
    out: Output,
    kernel: Kernel,
) {
    let n = weight.rows();
    for group in groups {
        let bytes = weight.group_bytes(group);
        let first_row = group * GROUP_ROWS;
        let valid = (n - first_row).min(GROUP_ROWS);
        let mut c = 0;
        while c < x.rows {
            let width = (x.rows - c).min(TILE_COLUMNS);
            let results = tile(weight.format(), bytes, x, c, width, kernel);
            for (j, row_results) in results.iter().enumerate().take(width) {
                // SAFETY: (c + j, first_row..first_row + valid) is inside the m × n output, and
                // only this task writes the columns of this group.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        row_results.as_ptr(),
                        out.0.add((c + j) * n + first_row),
                        valid,
                    );
                }
            }
            c += width;
        }
    }
}

/// One 16-row group against `width` (≤ 8) activation rows from `first`.
fn tile(
    format: QuantFormat,
    group: &[u8],
    x: &QuantizedActivations,
    first: usize,
    width: usize,
    kernel: Kernel,
) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
    macro_rules! widths {
        ($f:ident) => {
            match width {
                8 => $f::<8>(format, group, x, first),
                7 => $f::<7>(format, group, x, first),
                6 => $f::<6>(format, group, x, first),
                5 => $f::<5>(format, group, x, first),
                4 => $f::<4>(format, group, x, first),
                3 => $f::<3>(format, group, x, first),
                2 => $f::<2>(format, group, x, first),
                _ => $f::<1>(format, group, x, first),
            }
        };
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Vnni => widths!(tile_vnni),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => widths!(tile_avx2),
        _ => widths!(tile_scalar),
    }
}

#[cfg(target_arch = "x86_64")]
fn tile_vnni<const W: usize>(
    format: QuantFormat,
    group: &[u8],
    x: &QuantizedActivations,
    first: usize,
) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
    // SAFETY: `Kernel::Vnni` is only chosen when the CPU has these features.
    unsafe { x86::tile_vnni::<W>(format, group, x, first) }
}

#[cfg(target_arch = "x86_64")]
fn tile_avx2<const W: usize>(
    format: QuantFormat,
    group: &[u8],
    x: &QuantizedActivations,
    first: usize,
) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
    // SAFETY: `Kernel::Avx2` is only chosen when the CPU has these features.
    unsafe { x86::tile_avx2::<W>(format, group, x, first) }
}

/// The portable tile: per row and activation row, the integer dot product of each block pair,
/// scaled in f32.
fn tile_scalar<const W: usize>(
    format: QuantFormat,
    group: &[u8],
    x: &QuantizedActivations,
    first: usize,
) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
    let mut out = [[0.0f32; GROUP_ROWS]; TILE_COLUMNS];
    let bytes = group_block_bytes(format);
    let offset = match format {
        QuantFormat::Q8_0 => 128,
        QuantFormat::Q4_0 => 8,
        QuantFormat::Q4_1 => 0,
    };
    for b in 0..x.blocks {
        let block = &group[b * bytes..(b + 1) * bytes];
        let values = &block[values_offset(format)..];
        for r in 0..GROUP_ROWS {
            let d = f16::from_le_bytes([block[2 * r], block[2 * r + 1]]).to_f32();
            let m = match format {
                QuantFormat::Q4_1 => {
                    f16::from_le_bytes([block[32 + 2 * r], block[33 + 2 * r]]).to_f32()
                }
                _ => 0.0,
            };
            for (j, out_j) in out.iter_mut().enumerate().take(W) {
                let (qx, dx, sx) = x.block(first + j, b);
                let mut dot = 0i32;
                for (k, &xv) in qx.iter().enumerate() {
                    let stored = match format {
                        QuantFormat::Q8_0 => values[64 * (k / 4) + 4 * r + k % 4],
                        _ => {
                            let byte = values[64 * (k / 8) + 4 * r + k % 4];
                            if k % 8 < 4 { byte & 0x0F } else { byte >> 4 }
                        }
                    };
                    dot += stored as i32 * xv as i32;
                }
                dot -= offset * sx;
                out_j[r] += d * dx * dot as f32 + m * dx * sx as f32;
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    /// The 4 activation bytes of group `g` (columns 4g..4g+4) of a block, as one i32.
    #[inline(always)]
    unsafe fn group_word(values: *const i8, g: usize) -> i32 {
        unsafe { (values.add(4 * g) as *const i32).read_unaligned() }
    }

    /// AVX-512 VNNI: 16 rows per zmm, one `vpdpbusd` per 4 columns and activation row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
    pub(super) unsafe fn tile_vnni<const W: usize>(
        format: QuantFormat,
        group: &[u8],
        x: &QuantizedActivations,
        first: usize,
    ) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
        let bytes = group_block_bytes(format);
        let values_at = values_offset(format);
        let offset = match format {
            QuantFormat::Q8_0 => 128,
            QuantFormat::Q4_0 => 8,
            QuantFormat::Q4_1 => 0,
        };
        let nibbles = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); W];
        // SAFETY (whole body): `group` holds `x.blocks` group blocks; activation rows
        // `first..first + W` exist; every pointer stays inside them.
        unsafe {
            let base = group.as_ptr();
            for b in 0..x.blocks {
                let block = base.add(b * bytes);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(block as *const __m256i));
                let mut dot = [_mm512_setzero_si512(); W];
                let mut xv = [std::ptr::null::<i8>(); W];
                let mut dx = [0.0f32; W];
                let mut sx = [0i32; W];
                for j in 0..W {
                    let (q, scale, sum) = x.block(first + j, b);
                    xv[j] = q.as_ptr();
                    dx[j] = scale;
                    sx[j] = sum;
                    if offset != 0 {
                        dot[j] = _mm512_set1_epi32(-offset * sum);
                    }
                }
                let values = block.add(values_at);
                if format == QuantFormat::Q8_0 {
                    for g in 0..8 {
                        let w = _mm512_loadu_si512(values.add(64 * g) as *const __m512i);
                        for j in 0..W {
                            let a = _mm512_set1_epi32(group_word(xv[j], g));
                            dot[j] = _mm512_dpbusd_epi32(dot[j], w, a);
                        }
                    }
                } else {
                    for p in 0..4 {
                        let w = _mm512_loadu_si512(values.add(64 * p) as *const __m512i);
                        let low = _mm512_and_si512(w, nibbles);
                        let high = _mm512_and_si512(_mm512_srli_epi16(w, 4), nibbles);
                        for j in 0..W {
                            let a = _mm512_set1_epi32(group_word(xv[j], 2 * p));
                            let b = _mm512_set1_epi32(group_word(xv[j], 2 * p + 1));
                            dot[j] = _mm512_dpbusd_epi32(dot[j], low, a);
                            dot[j] = _mm512_dpbusd_epi32(dot[j], high, b);
                        }
                    }
                }
                for j in 0..W {
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(dx[j]));
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[j]), scale, acc[j]);
                }
                if format == QuantFormat::Q4_1 {
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(block.add(32) as *const __m256i));
                    for j in 0..W {
                        acc[j] = _mm512_fmadd_ps(m, _mm512_set1_ps(dx[j] * sx[j] as f32), acc[j]);
                    }
                }
            }
            let mut out = [[0.0f32; GROUP_ROWS]; TILE_COLUMNS];
            for j in 0..W {
                _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]);
            }
            out
        }
    }

    /// AVX2: the 16 rows as two halves of 8 lanes; `vpmaddubsw` + `vpmaddwd` per 4 columns.
    /// Q8_0's stored `w + 128` would saturate `vpmaddubsw`, so its signed values are recovered and
    /// multiplied as `|w| · sign(x, w)` instead.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn tile_avx2<const W: usize>(
        format: QuantFormat,
        group: &[u8],
        x: &QuantizedActivations,
        first: usize,
    ) -> [[f32; GROUP_ROWS]; TILE_COLUMNS] {
        let bytes = group_block_bytes(format);
        let values_at = values_offset(format);
        let nibbles = _mm256_set1_epi8(0x0F);
        let flip = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut out = [[0.0f32; GROUP_ROWS]; TILE_COLUMNS];
        // SAFETY (whole body): as in `tile_vnni`.
        unsafe {
            let base = group.as_ptr();
            for half in 0..2 {
                let mut acc = [_mm256_setzero_ps(); W];
                for b in 0..x.blocks {
                    let block = base.add(b * bytes);
                    let d =
                        _mm256_cvtph_ps(_mm_loadu_si128(block.add(16 * half) as *const __m128i));
                    let mut dot = [_mm256_setzero_si256(); W];
                    let mut xv = [std::ptr::null::<i8>(); W];
                    let mut dx = [0.0f32; W];
                    let mut sx = [0i32; W];
                    for j in 0..W {
                        let (q, scale, sum) = x.block(first + j, b);
                        xv[j] = q.as_ptr();
                        dx[j] = scale;
                        sx[j] = sum;
                        if format == QuantFormat::Q4_0 {
                            dot[j] = _mm256_set1_epi32(-8 * sum);
                        }
                    }
                    let values = block.add(values_at + 32 * half);
                    if format == QuantFormat::Q8_0 {
                        for g in 0..8 {
                            let stored = _mm256_loadu_si256(values.add(64 * g) as *const __m256i);
                            let w = _mm256_xor_si256(stored, flip);
                            let magnitude = _mm256_abs_epi8(w);
                            for j in 0..W {
                                let a = _mm256_set1_epi32(group_word(xv[j], g));
                                let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(a, w));
                                dot[j] = _mm256_add_epi32(dot[j], _mm256_madd_epi16(pairs, ones));
                            }
                        }
                    } else {
                        for p in 0..4 {
                            let w = _mm256_loadu_si256(values.add(64 * p) as *const __m256i);
                            let low = _mm256_and_si256(w, nibbles);
                            let high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibbles);
                            for j in 0..W {
                                let a = _mm256_set1_epi32(group_word(xv[j], 2 * p));
                                let b = _mm256_set1_epi32(group_word(xv[j], 2 * p + 1));
                                let pa = _mm256_madd_epi16(_mm256_maddubs_epi16(low, a), ones);
                                let pb = _mm256_madd_epi16(_mm256_maddubs_epi16(high, b), ones);
                                dot[j] = _mm256_add_epi32(dot[j], _mm256_add_epi32(pa, pb));
                            }
                        }
                    }
                    for j in 0..W {
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(dx[j]));
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[j]), scale, acc[j]);
                    }
                    if format == QuantFormat::Q4_1 {
                        let m = _mm256_cvtph_ps(_mm_loadu_si128(
                            block.add(32 + 16 * half) as *const __m128i
                        ));
                        for j in 0..W {
                            acc[j] =
                                _mm256_fmadd_ps(m, _mm256_set1_ps(dx[j] * sx[j] as f32), acc[j]);
                        }
                    }
                }
                for j in 0..W {
                    _mm256_storeu_ps(out[j].as_mut_ptr().add(8 * half), acc[j]);
                }
            }
            out
        }
    }
}
