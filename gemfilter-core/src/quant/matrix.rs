//! A weight matrix in packed blocks, held in host memory: owned, or borrowed straight from a
//! memory-mapped file when the file already holds the format.

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

use super::format::{BLOCK, QuantFormat};
use super::interleaved::InterleavedMatrix;
use super::kernels::{Kernel, QuantizedActivations, matmul_into};
use crate::error::{CoreError, Result};

/// Bytes shared with their owner (a `Vec`, a memory map): a window `range` of `buffer`.
#[derive(Clone)]
pub struct SharedBytes {
    buffer: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl SharedBytes {
    /// The window `range` of `buffer` (e.g. one tensor of a memory-mapped GGUF file).
    pub fn new(buffer: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Result<Self> {
        let len = (*buffer).as_ref().len();
        if range.start > range.end || range.end > len {
            return Err(CoreError::Quantization(format!(
                "bytes {range:?} are outside a buffer of {len} bytes"
            )));
        }
        Ok(Self { buffer, range })
    }

    /// Owned bytes.
    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self {
            buffer: Arc::new(bytes),
            range: 0..len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.buffer).as_ref()[self.range.clone()]
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.range.len())
    }
}

/// A `rows × cols` matrix (a projection's `[out, in]`, as Hugging Face and GGUF store it) packed
/// row by row in blocks of 32 along `cols`.
#[derive(Clone)]
pub struct PackedMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: SharedBytes,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedMatrix({} {}×{}, {} bytes)",
            self.format,
            self.rows,
            self.cols,
            self.byte_len()
        )
    }
}

fn check_width(cols: usize) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(CoreError::Quantization(format!(
            "rows of {cols} values cannot be packed in blocks of {BLOCK}; keep this model's weights dense"
        )));
    }
    Ok(())
}

impl PackedMatrix {
    /// Bytes a `rows × cols` matrix takes in `format`.
    pub fn byte_len_of(format: QuantFormat, rows: usize, cols: usize) -> usize {
        rows * (cols / BLOCK) * format.block_bytes()
    }

    /// Packs `values` (`rows × cols`, row-major) into `format`, rows in parallel.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Result<Self> {
        check_width(cols)?;
        if values.len() != rows * cols {
            return Err(CoreError::Quantization(format!(
                "{} values for a {rows} × {cols} matrix",
                values.len()
            )));
        }
        let row_bytes = cols / BLOCK * format.block_bytes();
        let mut bytes = vec![0u8; rows * row_bytes];
        bytes
            .par_chunks_mut(row_bytes.max(1))
            .zip(values.par_chunks(cols))
            .for_each(|(out, row)| {
                for (block, chunk) in out.chunks_mut(format.block_bytes()).zip(row.chunks(BLOCK)) {
                    format.quantize_block(chunk, block);
                }
            });
        Self::from_bytes(format, rows, cols, SharedBytes::owned(bytes))
    }

    /// A matrix over bytes already in `format` (checked for length).
    pub fn from_bytes(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        bytes: SharedBytes,
    ) -> Result<Self> {
        check_width(cols)?;
        let expected = Self::byte_len_of(format, rows, cols);
        if bytes.as_slice().len() != expected {
            return Err(CoreError::Quantization(format!(
                "a {rows} × {cols} {format} matrix takes {expected} bytes, got {}",
                bytes.as_slice().len()
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            bytes,
        })
    }

    /// The block format.
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn byte_len(&self) -> usize {
        self.bytes.as_slice().len()
    }

    /// The packed bytes of every row, in order.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn row_len(&self) -> usize {
        self.cols / BLOCK * self.format.block_bytes()
    }

    /// The packed bytes of row `row`.
    pub fn row_bytes(&self, row: usize) -> &[u8] {
        let len = self.row_len();
        &self.bytes.as_slice()[row * len..(row + 1) * len]
    }

    /// The matrix of rows `rows` in that order (for fused tensors and reordered heads); shares
    /// the bytes when the rows are one ascending run.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(CoreError::Quantization(format!(
                "row {bad} of a matrix of {} rows",
                self.rows
            )));
        }
        let len = self.row_len();
        let contiguous = rows.windows(2).all(|w| w[1] == w[0] + 1);
        let bytes = match rows.first() {
            Some(&first) if contiguous => {
                let start = self.bytes.range.start + first * len;
                SharedBytes {
                    buffer: Arc::clone(&self.bytes.buffer),
                    range: start..start + rows.len() * len,
                }
            }
            _ => SharedBytes::owned(
                rows.iter()
                    .flat_map(|&r| self.row_bytes(r).iter().copied())
                    .collect(),
            ),
        };
        Self::from_bytes(self.format, rows.len(), self.cols, bytes)
    }

    /// Row `row` as f32 values.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let bytes = self.format.block_bytes();
        for (block, chunk) in self.row_bytes(row).chunks(bytes).zip(out.chunks_mut(BLOCK)) {
            self.format.dequantize_block(block, chunk);
        }
    }

    /// The rows `rows` as f32 values, `rows.len() × cols` (an embedding lookup).
    pub fn dequantize_rows(&self, rows: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0f32; rows.len() * self.cols];
        for (&row, chunk) in rows.iter().zip(out.chunks_mut(self.cols)) {
            self.dequantize_row(row, chunk);
        }
        out
    }

    /// The whole matrix as f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let rows: Vec<usize> = (0..self.rows).collect();
        self.dequantize_rows(&rows)
    }

    /// `x · Wᵀ` for `x` of `m × cols` (row-major): `m × rows`, with the best kernel of this CPU
    /// (the matrix is interleaved for the kernels first: for repeated products, keep an
    /// [`InterleavedMatrix`]).
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        InterleavedMatrix::from_packed(self).matmul(x, m)
    }

    /// [`matmul`](Self::matmul) with a chosen kernel (for tests and measurements).
    pub fn matmul_with(&self, x: &[f32], m: usize, kernel: Kernel) -> Result<Vec<f32>> {
        InterleavedMatrix::from_packed(self).matmul_with(x, m, kernel)
    }
}

impl InterleavedMatrix {
    /// `x · Wᵀ` for `x` of `m × cols` (row-major): `m × rows`, with the best kernel of this CPU.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_with(x, m, Kernel::detect())
    }

    /// [`matmul`](Self::matmul) with a chosen kernel (for tests and measurements).
    pub fn matmul_with(&self, x: &[f32], m: usize, kernel: Kernel) -> Result<Vec<f32>> {
        if x.len() != m * self.cols() {
            return Err(CoreError::Quantization(format!(
                "{} activation values for {m} rows of {}",
                x.len(),
                self.cols()
            )));
        }
        let quantized = QuantizedActivations::new(x, m, self.cols());
        let mut out = vec![0.0f32; m * self.rows()];
        matmul_into(self, &quantized, &mut out, kernel);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values with some spread, different per row.
    fn values(rows: usize, cols: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..rows * cols)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Every kernel computes the product of the dequantised weights with the quantised
    /// activations: compared with f64 arithmetic on exactly those values, the error is f32
    /// rounding; against unquantised activations, it is the activations' 8-bit rounding.
    #[test]
    fn kernels_agree_with_the_dequantised_product() {
        for format in QuantFormat::ALL {
            for (m, n, k) in [
                (1, 7, 64),
                (3, 9, 96),
                (5, 16, 32),
                (70, 13, 128),
                (4, 4, 256),
            ] {
                let w = PackedMatrix::quantize(&values(n, k, 3), n, k, format).unwrap();
                let dense = w.dequantize();
                let x = values(m, k, 11);
                let qx = &QuantizedActivations::new(&x, m, k);
                let x_seen: Vec<f32> = (0..m)
                    .flat_map(|r| {
                        (0..k / BLOCK).flat_map(move |b| {
                            let (q, d, _) = qx.block(r, b);
                            q.iter().map(move |&v| v as f32 * d).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let reference = |xs: &[f32]| -> Vec<f64> {
                    let mut y = vec![0.0f64; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            y[i * n + j] = (0..k)
                                .map(|t| xs[i * k + t] as f64 * dense[j * k + t] as f64)
                                .sum();
                        }
                    }
                    y
                };
                let exact = reference(&x_seen);
                let unquantised = reference(&x);
                for kernel in Kernel::available() {
                    let y = w.matmul_with(&x, m, kernel).unwrap();
                    for ((a, e), u) in y.iter().zip(&exact).zip(&unquantised) {
                        let scale = e.abs().max(1.0);
                        assert!(
                            (*a as f64 - e).abs() <= 1e-5 * scale * k as f64 / 32.0,
                            "{format} {kernel:?} {m}×{n}×{k}: {a} vs {e}"
                        );
                        assert!(
                            (*a as f64 - u).abs() <= 0.02 * (k as f64).sqrt(),
                            "{format} {kernel:?}: activation rounding {a} vs {u}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rows_select_shares_runs_and_copies_permutations() {
        let w = PackedMatrix::quantize(&values(6, 64, 5), 6, 64, QuantFormat::Q4_1).unwrap();
        let run = w.select_rows(&[2, 3, 4]).unwrap();
        assert_eq!(run.bytes(), &w.bytes()[2 * 40..5 * 40]);
        let shuffled = w.select_rows(&[5, 0]).unwrap();
        assert_eq!(shuffled.row_bytes(0), w.row_bytes(5));
        assert_eq!(shuffled.row_bytes(1), w.row_bytes(0));
        assert!(w.select_rows(&[6]).is_err());
    }

    #[test]
    fn widths_off_the_block_grid_are_refused() {
        let err = PackedMatrix::quantize(&[0.0; 48], 1, 48, QuantFormat::Q8_0).unwrap_err();
        assert!(err.to_string().contains("blocks of 32"), "{err}");
    }
}
