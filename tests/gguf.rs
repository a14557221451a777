//! GGUF: dequantisers against the `gguf` Python package, tiny GGUF models against transformers
//! loading the same files, tokenizers rebuilt from metadata against transformers' ids, and
//! malformed files refused with a clear error.

use std::path::PathBuf;

use gemfilter_models::gguf::{GgmlType, GgufFile, dtype, tokenizer_from_gguf};
use gemfilter_models::{Model, ModelError, ModelFormat};
use gemfilter_tests::{
    Device, fixture_dir, last_logits, load_dense, max_abs_diff, on_every_backend,
};
use serde::Deserialize;

fn gguf_dir() -> PathBuf {
    fixture_dir("gguf")
}

#[derive(Deserialize)]
struct DequantCase {
    bytes: String,
    values: Vec<f32>,
}

#[derive(Deserialize)]
struct GgufReference {
    test_set: Vec<String>,
    files: std::collections::BTreeMap<String, FileReference>,
}

#[derive(Deserialize)]
struct FileReference {
    ids: Vec<Vec<u32>>,
    prompt_ids: Option<Vec<u32>>,
    last_logits: Option<Vec<f32>>,
}

fn reference() -> GgufReference {
    serde_json::from_str(&std::fs::read_to_string(gguf_dir().join("reference.json")).unwrap())
        .unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn dequantisers_match_the_gguf_package_bit_for_bit() {
    let cases: std::collections::BTreeMap<String, DequantCase> =
        serde_json::from_str(&std::fs::read_to_string(gguf_dir().join("dequant.json")).unwrap())
            .unwrap();
    let types = [
        ("F32", GgmlType::F32),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
    ];
    for (name, ty) in types {
        let case = &cases[name];
        let values = dtype::dequantize(ty, &hex(&case.bytes), case.values.len()).unwrap();
        assert_eq!(values.len(), case.values.len(), "{name}");
        for (i, (got, want)) in values.iter().zip(&case.values).enumerate() {
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{name} element {i}: {got} vs {want}"
            );
        }
    }
    let err = dtype::dequantize(GgmlType::Q4K, &[0u8; 100], 256).unwrap_err();
    assert!(err.contains("do not hold 256 Q4_K elements"), "{err}");
}

/// Tokenizers rebuilt from GGUF metadata give transformers' ids on the test set (ASCII, digits,
/// unicode, whitespace runs, special tokens, empty), for gpt2 and SentencePiece vocabularies.
#[test]
fn tokenizers_from_metadata_match_transformers() {
    let reference = reference();
    for (file_name, expected) in &reference.files {
        let file = GgufFile::open(&gguf_dir().join(file_name)).unwrap();
        let tokenizer = tokenizer_from_gguf(&file).unwrap();
        for (text, ids) in reference.test_set.iter().zip(&expected.ids) {
            assert_eq!(
                &tokenizer.encode(text, true).unwrap(),
                ids,
                "{file_name}: {text:?}"
            );
        }
    }
}

/// A tiny model converted as llama.cpp does (Q/K rows permuted, mixed quantised types) loads and
/// gives transformers' logits for the same GGUF file. (`llama-tied.gguf` declares linear RoPE
/// scaling, which llama.cpp applies and transformers 5.24's GGUF loader ignores for `llama`; it is
/// checked against its Hugging Face folder instead, below.)
fn gguf_models_match_transformers(device: &Device) {
    let reference = reference();
    {
        let name = "llama-gqa.gguf";
        let expected = &reference.files[name];
        let model = load_dense(gguf_dir().join(name), device);
        assert_eq!(model.info().format, ModelFormat::Gguf);
        let ids = expected.prompt_ids.as_ref().unwrap();
        let logits = last_logits(&model, ids);
        let error = max_abs_diff(&logits, expected.last_logits.as_ref().unwrap());
        println!("{name} on {device:?}: max |logit error| vs transformers = {error:.3e}");
        assert!(error <= 1e-4, "{name}: logits differ by {error}");
    }
}

/// The f32 GGUF of a fixture and its Hugging Face folder are the same model.
fn gguf_and_folder_agree(device: &Device) {
    let folder = Model::load(fixture_dir("llama-tied"), device).unwrap();
    let gguf = load_dense(gguf_dir().join("llama-tied.gguf"), device);
    assert_eq!(
        folder.decoder().config().num_layers,
        gguf.decoder().config().num_layers
    );
    let ids = gemfilter_tests::reference("llama-tied").prompt_ids;
    let a = last_logits(&folder, &ids);
    let b = last_logits(&gguf, &ids);
    // The folder stores f16 weights, the GGUF their f32 values: identical numbers.
    assert!(max_abs_diff(&a, &b) < 1e-5, "{}", max_abs_diff(&a, &b));
    assert!(gguf.chat_template().is_some());
    assert_eq!(gguf.info().eos_token_ids, vec![2]);
}

/// Phi-3 as llama.cpp writes it (fused attn_qkv / ffn_up, longrope factors as tensors, window
/// and original context in metadata) is the same model as its Hugging Face folder.
fn phi3_gguf_matches_its_folder(device: &Device) {
    let folder = Model::load(fixture_dir("phi3-longrope"), device).unwrap();
    let gguf = load_dense(gguf_dir().join("phi3-longrope.gguf"), device);
    assert_eq!(gguf.info().architecture.name(), "phi3");
    let (mut a, b) = (
        gguf.decoder().config().clone(),
        folder.decoder().config().clone(),
    );
    // GGUF stores eps as f32: 1e-5 reads back as 9.9999997e-6 (the same f32 in the arithmetic).
    assert!((a.rms_norm_eps - b.rms_norm_eps).abs() < 1e-12);
    a.rms_norm_eps = b.rms_norm_eps;
    match (&mut a.rope.scaling, &b.rope.scaling) {
        (
            gemfilter_core::RopeScaling::LongRope {
                short_factor,
                long_factor,
                attention_factor,
                ..
            },
            gemfilter_core::RopeScaling::LongRope {
                attention_factor: expected,
                ..
            },
        ) => {
            // Factors travel as f32 tensors and the attention factor as f32 metadata.
            assert!((*attention_factor - expected).abs() < 1e-6);
            *attention_factor = *expected;
            for f in short_factor.iter_mut().chain(long_factor.iter_mut()) {
                *f = (*f as f32) as f64;
            }
        }
        other => panic!("expected longrope on both sides, got {other:?}"),
    }
    let mut b = b;
    if let gemfilter_core::RopeScaling::LongRope {
        short_factor,
        long_factor,
        ..
    } = &mut b.rope.scaling
    {
        for f in short_factor.iter_mut().chain(long_factor.iter_mut()) {
            *f = (*f as f32) as f64;
        }
    }
    assert_eq!(a, b);
    let r = gemfilter_tests::reference("phi3-longrope");
    for ids in [&r.prompt_ids, &r.short_prompt.as_ref().unwrap().ids] {
        let error = max_abs_diff(&last_logits(&folder, ids), &last_logits(&gguf, ids));
        assert!(error < 1e-5, "phi3 GGUF vs folder: {error}");
    }
}

on_every_backend!(
    gguf_models_match_transformers,
    gguf_and_folder_agree,
    phi3_gguf_matches_its_folder
);

fn broken_copy(edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    let mut bytes = std::fs::read(gguf_dir().join("llama-gqa.gguf")).unwrap();
    edit(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn load_error(path: &PathBuf) -> String {
    Model::load(path, &Device::flex()).unwrap_err().to_string()
}

/// Byte offset of the type field of the first tensor-directory entry named `name`.
fn tensor_type_offset(bytes: &[u8], name: &str) -> usize {
    let needle = name.as_bytes();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("tensor name in header");
    let after_name = at + needle.len();
    let n_dims = u32::from_le_bytes(bytes[after_name..after_name + 4].try_into().unwrap()) as usize;
    after_name + 4 + 8 * n_dims
}

#[test]
fn wrong_magic() {
    let (_d, path) = broken_copy(|b| b[..4].copy_from_slice(b"GGUG"));
    let err = load_error(&path);
    assert!(
        err.contains("neither a Hugging Face model folder nor a GGUF file"),
        "{err}"
    );
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}

#[test]
fn unsupported_version() {
    let (_d, path) = broken_copy(|b| b[4..8].copy_from_slice(&7u32.to_le_bytes()));
    let err = load_error(&path);
    assert!(
        err.contains("unsupported GGUF version 7 (supported: 2, 3)"),
        "{err}"
    );
}

#[test]
fn truncated_tensor_data() {
    let (_d, path) = broken_copy(|b| b.truncate(b.len() - 4096));
    let err = load_error(&path);
    assert!(
        err.starts_with("corrupt weights file") && err.contains("(truncated?)"),
        "{err}"
    );
}

#[test]
fn truncated_header() {
    let (_d, path) = broken_copy(|b| b.truncate(300));
    let err = load_error(&path);
    assert!(
        err.contains("unexpected end of file")
            || err.contains("runs past the end")
            || err.contains("more than the file can hold"),
        "{err}"
    );
}

#[test]
fn unknown_tensor_type_is_named() {
    let (_d, path) = broken_copy(|b| {
        let at = tensor_type_offset(b, "blk.0.attn_q.weight");
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    });
    let err = load_error(&path);
    assert!(
        err.contains("tensor `blk.0.attn_q.weight` has unknown ggml type 99"),
        "{err}"
    );
}

#[test]
fn unsupported_tensor_type_is_named() {
    let (_d, path) = broken_copy(|b| {
        // Q8_0 → IQ4_NL: a real ggml type this crate does not implement.
        let at = tensor_type_offset(b, "blk.0.attn_q.weight");
        b[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    });
    let err = load_error(&path);
    assert!(
        err.contains("tensor `blk.0.attn_q.weight`")
            && err.contains("unsupported element type IQ4_NL"),
        "{err}"
    );
}

#[test]
fn unsupported_architecture() {
    let (_d, path) = broken_copy(|b| {
        let at = b.windows(5).position(|w| w == b"llama").unwrap();
        b[at..at + 5].copy_from_slice(b"mamba");
    });
    let err = load_error(&path);
    assert!(
        err.contains("unsupported architecture: general.architecture `mamba`"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_metadata() {
    let (_d, path) = broken_copy(|b| {
        let key = b"tokenizer.ggml.model";
        let at = b.windows(key.len()).position(|w| w == key).unwrap();
        b[at..at + key.len()].copy_from_slice(b"tokenizer.ggml.xxxxx");
    });
    let err = load_error(&path);
    assert!(
        err.contains("metadata `tokenizer.ggml.model` is missing"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named_in_gguf_terms() {
    let (_d, path) = broken_copy(|b| {
        let name = b"blk.1.ffn_up.weight";
        let at = b.windows(name.len()).position(|w| w == name).unwrap();
        b[at..at + name.len()].copy_from_slice(b"blk.1.ffn_zz.weight");
    });
    let err = load_error(&path);
    assert!(
        err.contains("missing tensors in") && err.contains("`blk.1.ffn_up.weight`"),
        "{err}"
    );
}

#[test]
fn directory_claiming_too_much_is_refused() {
    let (_d, path) = broken_copy(|b| b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()));
    let err = load_error(&path);
    assert!(err.contains("more than the file can hold"), "{err}");
    assert!(matches!(
        Model::load(&path, &Device::flex()).unwrap_err(),
        ModelError::CorruptWeights { .. }
    ));
}
