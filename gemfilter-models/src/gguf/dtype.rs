//! ggml element encodings and their dequantisation to f32 (the formulas of ggml's reference
//! `dequantize_row_*`, which the `gguf` Python package and transformers reproduce).

use half::{bf16, f16};

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// The ggml tensor types this crate reads (others are refused by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    BF16,
    /// 4-bit, blocks of 32 with one f16 scale.
    Q4_0,
    /// 4-bit, blocks of 32 with an f16 scale and minimum.
    Q4_1,
    /// 5-bit, blocks of 32 with one f16 scale.
    Q5_0,
    /// 5-bit, blocks of 32 with an f16 scale and minimum.
    Q5_1,
    /// 8-bit, blocks of 32 with one f16 scale.
    Q8_0,
    /// 4-bit K-quant, super-blocks of 256.
    Q4K,
    /// 5-bit K-quant, super-blocks of 256.
    Q5K,
    /// 6-bit K-quant, super-blocks of 256.
    Q6K,
    /// A type defined by ggml but not implemented here (its id and name).
    Unsupported(u32, &'static str),
}

impl GgmlType {
    /// The type with ggml id `id`, or `None` for ids ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            9 => GgmlType::Unsupported(id, "Q8_1"),
            10 => GgmlType::Unsupported(id, "Q2_K"),
            11 => GgmlType::Unsupported(id, "Q3_K"),
            15 => GgmlType::Unsupported(id, "Q8_K"),
            16 => GgmlType::Unsupported(id, "IQ2_XXS"),
            17 => GgmlType::Unsupported(id, "IQ2_XS"),
            18 => GgmlType::Unsupported(id, "IQ3_XXS"),
            19 => GgmlType::Unsupported(id, "IQ1_S"),
            20 => GgmlType::Unsupported(id, "IQ4_NL"),
            21 => GgmlType::Unsupported(id, "IQ3_S"),
            22 => GgmlType::Unsupported(id, "IQ2_S"),
            23 => GgmlType::Unsupported(id, "IQ4_XS"),
            24 => GgmlType::Unsupported(id, "I8"),
            25 => GgmlType::Unsupported(id, "I16"),
            26 => GgmlType::Unsupported(id, "I32"),
            27 => GgmlType::Unsupported(id, "I64"),
            28 => GgmlType::Unsupported(id, "F64"),
            29 => GgmlType::Unsupported(id, "IQ1_M"),
            34 => GgmlType::Unsupported(id, "TQ1_0"),
            35 => GgmlType::Unsupported(id, "TQ2_0"),
            39 => GgmlType::Unsupported(id, "MXFP4"),
            _ => return None,
        })
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Unsupported(_, name) => name,
        }
    }

    /// (elements per block, bytes per block); `None` for unsupported types.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (QK_K, 144),
            GgmlType::Q5K => (QK_K, 176),
            GgmlType::Q6K => (QK_K, 210),
            GgmlType::Unsupported(..) => return None,
        })
    }

    /// Bytes of a tensor whose rows are `row_len` elements, `elements` in all. Unsupported
    /// types are sized as zero here and refused when dequantised (so a file can still be
    /// inspected).
    pub fn byte_len(self, row_len: u64, elements: u64) -> Result<u64, String> {
        let Some((block_elems, block_bytes)) = self.block() else {
            return Ok(0);
        };
        if !row_len.is_multiple_of(block_elems as u64) {
            return Err(format!(
                "rows of {row_len} elements are not a multiple of the {} block size {block_elems}",
                self.name()
            ));
        }
        (elements / block_elems as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| "size overflows".to_string())
    }
}

/// Dequantises `bytes` of type `ty` into f32 values (`elements` of them).
pub fn dequantize(ty: GgmlType, bytes: &[u8], elements: usize) -> Result<Vec<f32>, String> {
    let Some((block_elems, block_bytes)) = ty.block() else {
        return Err(format!("ggml type {} is not supported", ty.name()));
    };
    if !elements.is_multiple_of(block_elems) || bytes.len() != elements / block_elems * block_bytes
    {
        return Err(format!(
            "{} bytes do not hold {elements} {} elements",
            bytes.len(),
            ty.name()
        ));
    }
    let mut out = Vec::with_capacity(elements);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q5K => blocks.for_each(|b| q5_k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
        GgmlType::Unsupported(..) => unreachable!("refused above"),
    }
    Ok(out)
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `d f16 | qs[16]`: low nibbles are elements 0..16, high nibbles 16..32; x = (q - 8)·d.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `d f16 | m f16 | qs[16]`: x = q·d + m, nibble layout of Q4_0.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// The 5-bit values of a Q5_0 / Q5_1 block: low 4 bits from the nibbles of `qs` (Q4_0's
/// layout), the fifth from bit `j` of the little-endian `qh`.
fn five_bit_values(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|j| {
        let nibble = if j < 16 {
            qs[j] & 0x0F
        } else {
            qs[j - 16] >> 4
        };
        nibble | ((((high >> j) & 1) as u8) << 4)
    })
}

/// `d f16 | qh[4] | qs[16]`: x = (q − 16)·d with 5-bit q.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(
        five_bit_values(&b[2..6], &b[6..22])
            .iter()
            .map(|&q| (q as i32 - 16) as f32 * d),
    );
}

/// `d f16 | m f16 | qh[4] | qs[16]`: x = q·d + m with 5-bit q.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half(b, 0), half(b, 2));
    out.extend(
        five_bit_values(&b[4..8], &b[8..24])
            .iter()
            .map(|&q| q as f32 * d + m),
    );
}

/// Q4_K super-blocks as Q4_1 blocks: each 32-value sub-block keeps its 4-bit values, its scale
/// `d·sc` and offset `−dmin·m` rounded to f16 (the only change). `bytes` holds whole super-blocks.
pub fn q4_k_to_q4_1(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 144 * 8 * 20);
    for b in bytes.chunks_exact(144) {
        let (d, dmin) = (half(b, 0), half(b, 2));
        let scales = &b[4..16];
        for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
            let pair = k_quant_pair(d, dmin, scales, chunk);
            for (sub, (scale, min)) in pair.into_iter().enumerate() {
                let value = |l: usize| if sub == 0 { q[l] & 0x0F } else { q[l] >> 4 };
                out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(-min).to_le_bytes());
                out.extend((0..16).map(|j| value(j) | (value(j + 16) << 4)));
            }
        }
    }
    out
}

/// `d f16 | qs[32] i8`: x = q·d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// The 6-bit scale and minimum of sub-block `j` packed in the 12 `scales` bytes of Q4_K/Q5_K.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Scale and offset `(d·sc, dmin·m)` of the two sub-blocks of 32 elements in `chunk` (of 64)
/// of a Q4_K / Q5_K super-block.
fn k_quant_pair(d: f32, dmin: f32, scales: &[u8], chunk: usize) -> [(f32, f32); 2] {
    [2 * chunk, 2 * chunk + 1].map(|j| {
        let (sc, m) = scale_min_k4(j, scales);
        (d * sc as f32, dmin * m as f32)
    })
}

/// `d f16 | dmin f16 | scales[12] | qs[128]`: 8 sub-blocks of 32, x = d·sc·q − dmin·m.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let [(d1, min1), (d2, min2)] = k_quant_pair(d, dmin, scales, chunk);
        out.extend(q.iter().map(|&v| d1 * (v & 0x0F) as f32 - min1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - min2));
    }
}

/// `d f16 | dmin f16 | scales[12] | qh[32] | qs[128]`: Q4_K plus a fifth bit from `qh`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, ql) in qs.chunks_exact(32).enumerate() {
        let [(d1, min1), (d2, min2)] = k_quant_pair(d, dmin, scales, chunk);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d1 * ((l & 0x0F) + if h & u1 != 0 { 16 } else { 0 }) as f32 - min1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&l, &h)| d2 * ((l >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - min2),
        );
    }
}

/// `ql[128] | qh[64] | scales[16] i8 | d f16`: 16 sub-blocks of 16, x = d·sc·(q − 32).
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for half_block in 0..2 {
        let ql = &b[64 * half_block..64 * half_block + 64];
        let qh = &b[128 + 32 * half_block..128 + 32 * half_block + 32];
        let sc = &b[192 + 8 * half_block..192 + 8 * half_block + 8];
        let y = &mut y[128 * half_block..128 * half_block + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let scale = |i: usize| d * (sc[i] as i8) as f32;
            y[l] = scale(is) * q1 as f32;
            y[l + 32] = scale(is + 2) * q2 as f32;
            y[l + 64] = scale(is + 4) * q3 as f32;
            y[l + 96] = scale(is + 6) * q4 as f32;
        }
    }
}
