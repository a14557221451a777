//! GGUF container parsing (versions 2 and 3): header, metadata, tensor directory, alignment.
//!
//! Every length and offset read from the file is checked against the file's size before use,
//! so malformed files are errors, never panics or huge allocations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dtype::GgmlType;
use crate::error::{ModelError, Result};

/// `GGUF` as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most this many dimensions.
const MAX_DIMS: u32 = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Unsigned integer (u8, u16, u32, u64 in the file).
    UInt(u64),
    /// Signed integer (i8, i16, i32, i64 in the file).
    Int(i64),
    /// Floating point (f32, f64 in the file).
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 is replaced).
    String(String),
    /// Array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// As a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::UInt(v) => Some(v),
            MetaValue::Int(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// As a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::UInt(v) => Some(v as f64),
            MetaValue::Int(v) => Some(v as f64),
            MetaValue::Float(v) => Some(v),
            _ => None,
        }
    }

    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// As an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order (`ne[0]` is the fastest-varying, i.e. the input width).
    pub dims: Vec<u64>,
    /// Element encoding.
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data.
    pub byte_len: u64,
}

impl TensorInfo {
    /// Shape in row-major (PyTorch) order: the ggml dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn num_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file whose bytes stay memory-mapped.
#[derive(Debug, Clone)]
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<memmap2::Mmap>,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

impl GgufFile {
    /// Opens and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::NotFound {
                what: "GGUF file".into(),
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
        // truncated by another process while the model loads.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = Arc::new(bytes);
        let Header {
            version,
            metadata,
            tensors,
        } = parse(&bytes).map_err(|message| ModelError::CorruptWeights {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            version,
            metadata,
            tensors,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The tensor directory in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.offset as usize..(info.offset + info.byte_len) as usize]
    }

    /// Drops the file's pages from this process's resident memory (`madvise(MADV_DONTNEED)`).
    ///
    /// Loading reads every tensor once; the pages it touched stay resident (and count in RSS)
    /// although the model now holds its own repacked copy. Tensors still read from the map (an
    /// embedding table kept in the file's blocks) fault back in on use, row by row. A no-op
    /// where `madvise` is unavailable.
    pub fn release_resident_pages(&self) {
        #[cfg(unix)]
        {
            // SAFETY: the map is read-only and file-backed, so `MADV_DONTNEED` discards no data:
            // a later read of any page refaults it from the file with the same contents.
            let _ = unsafe {
                self.bytes
                    .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
            };
        }
    }

    /// Shared handle on the mapped bytes (for deferred dequantisation).
    pub fn shared_bytes(&self) -> Arc<memmap2::Mmap> {
        Arc::clone(&self.bytes)
    }
}

/// What a GGUF header holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Format version.
    pub version: u32,
    /// Metadata key → value.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor directory with absolute, bounds-checked offsets.
    pub tensors: Vec<TensorInfo>,
}

/// Parses a whole GGUF image held in memory; the error message says what is wrong.
pub fn parse(bytes: &[u8]) -> std::result::Result<Header, String> {
    let mut cursor = Cursor { bytes, pos: 0 };
    let magic = cursor
        .u32()
        .map_err(|_| "file too short for a GGUF header".to_string())?;
    if magic != MAGIC {
        return Err(format!(
            "not a GGUF file (magic {:02x?}, expected \"GGUF\")",
            magic.to_le_bytes()
        ));
    }
    let version = cursor.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!(
            "unsupported GGUF version {version} (supported: 2, 3)"
        ));
    }
    let tensor_count = cursor.u64()?;
    let kv_count = cursor.u64()?;
    // Each KV takes at least 12 bytes and each tensor entry at least 24: reject impossible
    // counts before allocating anything.
    if kv_count > (bytes.len() as u64) / 12 || tensor_count > (bytes.len() as u64) / 24 {
        return Err(format!(
            "header claims {kv_count} metadata entries and {tensor_count} tensors, more than the file can hold"
        ));
    }
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = cursor.string()?;
        let value_type = cursor.u32()?;
        let value = cursor
            .value(value_type, 0)
            .map_err(|e| format!("metadata `{key}`: {e}"))?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(format!(
                    "`general.alignment` must be a power of two, found {v:?}"
                ));
            }
        },
    };
    let mut entries = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = cursor.string()?;
        let n_dims = cursor.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(cursor.u64()?);
        }
        let type_id = cursor.u32()?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| format!("tensor `{name}` has unknown ggml type {type_id}"))?;
        let offset = cursor.u64()?;
        entries.push((name, dims, ggml_type, offset));
    }
    let data_start = (cursor.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, dims, ggml_type, offset) in entries {
        let elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor `{name}` has an overflowing shape {dims:?}"))?;
        let byte_len = ggml_type
            .byte_len(dims[0], elements)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` data offset {offset} is not {alignment}-aligned"
            ));
        }
        let start = data_start
            .checked_add(offset)
            .ok_or_else(|| format!("tensor `{name}` offset overflows"))?;
        let end = start
            .checked_add(byte_len)
            .ok_or_else(|| format!("tensor `{name}` size overflows"))?;
        if end > bytes.len() as u64 {
            return Err(format!(
                "tensor `{name}` needs bytes {start}..{end} but the file has {} (truncated?)",
                bytes.len()
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset: start,
            byte_len,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
    })
}

/// Arrays nest at most this deep (real files use one level).
const MAX_NESTING: usize = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "unexpected end of file at byte {} (needed {n} more bytes; truncated?)",
                    self.pos
                )
            })?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let len = self.u64()?;
        if len > (self.bytes.len() - self.pos) as u64 {
            return Err(format!(
                "string of {len} bytes at byte {} runs past the end of the file",
                self.pos
            ));
        }
        Ok(String::from_utf8_lossy(self.take(len as usize)?).into_owned())
    }

    fn value(&mut self, value_type: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match value_type {
            0 => MetaValue::UInt(self.array::<1>()?[0] as u64),
            1 => MetaValue::Int(self.array::<1>()?[0] as i8 as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::UInt(self.u32()? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.array()?) as f64),
            7 => match self.array::<1>()?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                other => return Err(format!("invalid boolean byte {other}")),
            },
            8 => MetaValue::String(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err("arrays nested too deeply".into());
                }
                let item_type = self.u32()?;
                let count = self.u64()?;
                let min_size = match item_type {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(format!("unknown array item type {other}")),
                };
                if count.saturating_mul(min_size) > (self.bytes.len() - self.pos) as u64 {
                    return Err(format!(
                        "array of {count} items runs past the end of the file"
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}
