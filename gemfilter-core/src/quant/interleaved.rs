//! The kernels' layout of a packed matrix: 16 rows interleaved, so that one 64-byte load holds
//! the same 4 columns of 16 rows and one vector lane accumulates one output.
//!
//! For every group of 16 rows (the last one padded with zero rows) and every block of 32 columns:
//!
//! ```text
//! scales  16 × f16                                   32 bytes
//! mins    16 × f16 (Q4_1 only)                       32 bytes
//! values  Q4: 4 chunks of 64 bytes; byte 4r + e of chunk p holds column 8p + e of row r in its low
//!             nibble and column 8p + 4 + e in its high nibble (values 0..15, as stored)
//!         Q8: 8 chunks of 64 bytes; byte 4r + e of chunk g holds column 4g + e of row r plus 128
//! ```
//!
//! Every value is unsigned, so a VNNI `vpdpbusd` multiplies it with signed 8-bit activations; the
//! offsets (8 for Q4_0, 128 for Q8_0) come back out through the activations' block sums. The bytes
//! per row are those of the file's blocks, padding aside.

use half::f16;
use rayon::prelude::*;

use super::format::{BLOCK, QuantFormat};
use super::matrix::PackedMatrix;

/// Rows interleaved per group (one 512-bit vector of f32 outputs).
pub const GROUP_ROWS: usize = 16;

/// A packed matrix in the kernels' 16-row interleaved layout (see the module documentation).
#[derive(Clone)]
pub struct InterleavedMatrix {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for InterleavedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "InterleavedMatrix({} {}×{}, {} bytes)",
            self.format,
            self.rows,
            self.cols,
            self.data.len()
        )
    }
}

/// Byte offset of the values in a group block, after the scales (and mins).
pub(crate) const fn values_offset(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_1 => 64,
        _ => 32,
    }
}

/// Bytes of one group block (16 rows × 32 columns with their scales).
pub(crate) const fn group_block_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8_0 => 32 + 8 * 64,
        QuantFormat::Q4_0 => 32 + 4 * 64,
        QuantFormat::Q4_1 => 64 + 4 * 64,
    }
}

/// The value of column `j` (0..32) of a file block, as the interleaved layout stores it.
fn stored_value(format: QuantFormat, block: &[u8], j: usize) -> u8 {
    match format {
        QuantFormat::Q8_0 => block[2 + j] ^ 0x80,
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let q = if format == QuantFormat::Q4_0 {
                &block[2..]
            } else {
                &block[4..]
            };
            if j < 16 { q[j] & 0x0F } else { q[j - 16] >> 4 }
        }
    }
}

impl InterleavedMatrix {
    /// The interleaved layout of `matrix`, row groups in parallel.
    pub fn from_packed(matrix: &PackedMatrix) -> Self {
        let format = matrix.format();
        let (rows, cols) = (matrix.rows(), matrix.cols());
        let blocks = cols / BLOCK;
        let group_bytes = blocks * group_block_bytes(format);
        let groups = rows.div_ceil(GROUP_ROWS);
        let mut data = vec![0u8; groups * group_bytes];
        let file_block = format.block_bytes();
        data.par_chunks_mut(group_bytes.max(1))
            .enumerate()
            .for_each(|(group, out)| {
                for b in 0..blocks {
                    let out =
                        &mut out[b * group_block_bytes(format)..][..group_block_bytes(format)];
                    for r in 0..GROUP_ROWS {
                        let row = group * GROUP_ROWS + r;
                        if row >= rows {
                            break;
                        }
                        let block = &matrix.row_bytes(row)[b * file_block..(b + 1) * file_block];
                        out[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                        if format == QuantFormat::Q4_1 {
                            out[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&block[2..4]);
                        }
                        let values = &mut out[values_offset(format)..];
                        match format {
                            QuantFormat::Q8_0 => {
                                for g in 0..8 {
                                    for e in 0..4 {
                                        values[64 * g + 4 * r + e] =
                                            stored_value(format, block, 4 * g + e);
                                    }
                                }
                            }
                            _ => {
                                for p in 0..4 {
                                    for e in 0..4 {
                                        let low = stored_value(format, block, 8 * p + e);
                                        let high = stored_value(format, block, 8 * p + 4 + e);
                                        values[64 * p + 4 * r + e] = low | (high << 4);
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Self {
            format,
            rows,
            cols,
            data,
        }
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

    /// Bytes held (the file's bytes plus the padding of the last row group).
    pub fn byte_len(&self) -> usize {
        self.data.len()
    }

    /// Blocks of 32 columns per row.
    pub(crate) fn blocks(&self) -> usize {
        self.cols / BLOCK
    }

    /// Row groups of 16.
    pub(crate) fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP_ROWS)
    }

    /// The bytes of row group `group`.
    pub(crate) fn group_bytes(&self, group: usize) -> &[u8] {
        let len = self.blocks() * group_block_bytes(self.format);
        &self.data[group * len..(group + 1) * len]
    }

    /// Row `row` as f32 values.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let format = self.format;
        let (group, r) = (row / GROUP_ROWS, row % GROUP_ROWS);
        let bytes = self.group_bytes(group);
        for (b, chunk) in out.chunks_mut(BLOCK).enumerate() {
            let block = &bytes[b * group_block_bytes(format)..][..group_block_bytes(format)];
            let d = f16::from_le_bytes([block[2 * r], block[2 * r + 1]]).to_f32();
            let m = match format {
                QuantFormat::Q4_1 => {
                    f16::from_le_bytes([block[32 + 2 * r], block[33 + 2 * r]]).to_f32()
                }
                _ => 0.0,
            };
            let values = &block[values_offset(format)..];
            for (j, value) in chunk.iter_mut().enumerate() {
                let stored = match format {
                    QuantFormat::Q8_0 => values[64 * (j / 4) + 4 * r + j % 4],
                    _ => {
                        let byte = values[64 * (j / 8) + 4 * r + j % 4];
                        if j % 8 < 4 { byte & 0x0F } else { byte >> 4 }
                    }
                };
                *value = match format {
                    QuantFormat::Q8_0 => d * (stored as i32 - 128) as f32,
                    QuantFormat::Q4_0 => d * (stored as i32 - 8) as f32,
                    QuantFormat::Q4_1 => d * stored as f32 + m,
                };
            }
        }
    }

    /// The whole matrix as f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(row, chunk)| self.dequantize_row(row, chunk));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_interleaving() {
        for format in QuantFormat::ALL {
            let (rows, cols) = (21, 96);
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                .collect();
            let packed = PackedMatrix::quantize(&values, rows, cols, format).unwrap();
            let interleaved = InterleavedMatrix::from_packed(&packed);
            assert_eq!(interleaved.dequantize(), packed.dequantize(), "{format}");
            assert_eq!(interleaved.groups(), 2);
        }
    }
}
