//! The packed block formats: llama.cpp's `Q8_0`, `Q4_0` and `Q4_1`, byte for byte.
//!
//! Every format packs 32 consecutive values of a row into one block with an f16 scale:
//!
//! | format | bytes | layout | value |
//! |---|---:|---|---|
//! | `Q8_0` | 34 | `d: f16, q: [i8; 32]` | `d · q[j]` |
//! | `Q4_0` | 18 | `d: f16, q: [u8; 16]` (low nibble: element `j`, high: `j + 16`) | `d · (nibble − 8)` |
//! | `Q4_1` | 20 | `d: f16, m: f16, q: [u8; 16]` (same nibbles) | `d · nibble + m` |
//!
//! Quantisation follows ggml's reference rounding exactly, so a tensor quantised here equals the
//! one llama.cpp's `quantize` writes (checked against the `gguf` package in the tests).

use half::f16;
use serde::{Deserialize, Serialize};

/// Values per block, in every format.
pub const BLOCK: usize = 32;

/// A packed block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantFormat {
    /// 8-bit values, one f16 scale per 32 (≈ 1.06 bytes per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit values around 8, one f16 scale per 32 (≈ 0.56 bytes per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit values with an f16 scale and an f16 minimum per 32 (≈ 0.63 bytes per weight).
    #[serde(rename = "q4_1")]
    Q4_1,
}

impl QuantFormat {
    /// Every format, in order of size.
    pub const ALL: [QuantFormat; 3] = [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0];

    /// Bytes of one block of 32 values.
    pub const fn block_bytes(self) -> usize {
        match self {
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
        }
    }

    /// Bytes per weight, scales included.
    pub fn bytes_per_weight(self) -> f64 {
        self.block_bytes() as f64 / BLOCK as f64
    }

    /// llama.cpp's name (`q8_0`, `q4_0`, `q4_1`).
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8_0 => "q8_0",
            QuantFormat::Q4_0 => "q4_0",
            QuantFormat::Q4_1 => "q4_1",
        }
    }

    /// The format of a name as [`name`](Self::name) writes it (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Packs 32 values into `out` (`block_bytes()` long) with ggml's reference rounding.
    pub fn quantize_block(self, x: &[f32], out: &mut [u8]) {
        debug_assert_eq!(x.len(), BLOCK);
        debug_assert_eq!(out.len(), self.block_bytes());
        match self {
            QuantFormat::Q8_0 => {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (q, &v) in out[2..].iter_mut().zip(x) {
                    *q = (v * id).round() as i8 as u8;
                }
            }
            QuantFormat::Q4_0 => {
                // The value of largest magnitude, sign kept, maps to -8.
                let mut amax = 0.0f32;
                let mut max = 0.0f32;
                for &v in x {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..BLOCK / 2 {
                    let lo = ((x[j] * id + 8.5) as i8).min(15) as u8;
                    let hi = ((x[j + BLOCK / 2] * id + 8.5) as i8).min(15) as u8;
                    out[2 + j] = lo | (hi << 4);
                }
            }
            QuantFormat::Q4_1 => {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                out[2..4].copy_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..BLOCK / 2 {
                    let lo = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
                    let hi = (((x[j + BLOCK / 2] - min) * id + 0.5) as i8).min(15) as u8;
                    out[4 + j] = lo | (hi << 4);
                }
            }
        }
    }

    /// Unpacks one block into 32 values.
    pub fn dequantize_block(self, block: &[u8], out: &mut [f32]) {
        debug_assert_eq!(block.len(), self.block_bytes());
        debug_assert_eq!(out.len(), BLOCK);
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        match self {
            QuantFormat::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&block[2..]) {
                    *o = d * (q as i8) as f32;
                }
            }
            QuantFormat::Q4_0 => {
                for j in 0..BLOCK / 2 {
                    let q = block[2 + j];
                    out[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    out[j + BLOCK / 2] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
            QuantFormat::Q4_1 => {
                let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                for j in 0..BLOCK / 2 {
                    let q = block[4 + j];
                    out[j] = d * (q & 0x0F) as f32 + m;
                    out[j + BLOCK / 2] = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(scale: f32) -> Vec<f32> {
        (0..BLOCK)
            .map(|i| ((i as f32 * 0.37).sin() - 0.2) * scale)
            .collect()
    }

    /// Round trips stay within half a quantisation step of every value.
    #[test]
    fn round_trip_error_is_half_a_step() {
        for format in QuantFormat::ALL {
            for scale in [1e-3f32, 1.0, 40.0] {
                let x = ramp(scale);
                let mut block = vec![0u8; format.block_bytes()];
                format.quantize_block(&x, &mut block);
                let mut y = vec![0.0f32; BLOCK];
                format.dequantize_block(&block, &mut y);
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let (lo, hi) = x
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let step = match format {
                    QuantFormat::Q8_0 => amax / 127.0,
                    QuantFormat::Q4_0 => amax / 8.0,
                    QuantFormat::Q4_1 => (hi - lo) / 15.0,
                };
                for (a, b) in x.iter().zip(&y) {
                    // Half a step plus the f16 rounding of the scale (and minimum).
                    let bound = 0.5 * step + 2e-3 * amax + 1e-6;
                    assert!((a - b).abs() <= bound, "{format} {scale}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        for format in QuantFormat::ALL {
            let mut block = vec![0xAAu8; format.block_bytes()];
            format.quantize_block(&[0.0; BLOCK], &mut block);
            let mut y = vec![1.0f32; BLOCK];
            format.dequantize_block(&block, &mut y);
            assert!(y.iter().all(|&v| v == 0.0), "{format}: {y:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for format in QuantFormat::ALL {
            assert_eq!(QuantFormat::from_name(format.name()), Some(format));
        }
        assert_eq!(QuantFormat::from_name("Q4_0"), Some(QuantFormat::Q4_0));
        assert_eq!(QuantFormat::from_name("q5_0"), None);
    }
}
