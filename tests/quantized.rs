//! Packed quantised weights (`--weights native|q8_0|q4_0|q4_1`) against the arithmetic they stand
//! for, on every backend.
//!
//! - Formats: quantising gives the bytes llama.cpp's `quantize` writes (vectors from the `gguf`
//!   package, `scripts/reference/make_quant_fixtures.py`); Q5_0/Q5_1 dequantise exactly; Q4_K
//!   repacks as Q4_1 within the f16 rounding of its sub-block scales.
//! - Kernels: a packed model against its dequantised twin (the same packed values, dense): last
//!   logits within [`FIXTURE_TOLERANCE`] of the largest logit — the CPU kernels round the activations
//!   to 8 bits per block of 32, as llama.cpp does; GPU backends multiply the packed tensors in
//!   float — and identical greedy tokens and kept positions wherever the twin's margins exceed twice
//!   the measured error (where they do not, kept positions may only swap across the boundary).
//! - Files: GGUF fixtures and SmolLM2 loaded `native` against the same file dequantised to f32
//!   (`dense`, the path before packed weights): the same comparison, the format's error included.
//! - A width off the block grid is refused with the tensor named.

use gemfilter_core::quant::{PackedMatrix, QuantFormat, SharedBytes};
use gemfilter_core::{GemFilterSelector, RunOptions, select_tokens};
use gemfilter_models::gguf::GgmlType;
use gemfilter_models::gguf::dtype::{dequantize, q4_k_to_q4_1};
use gemfilter_models::{LoadOptions, Model, WeightFormat};
use gemfilter_tests::{
    Device, FIXTURES, fixture_dir, host_values, last_logits, max_abs_diff, on_every_backend,
    reference, smollm2_path,
};
use serde::Deserialize;

/// Largest logit error of a packed tiny fixture against its dequantised twin (or a GGUF fixture
/// against the file dequantised to f32, the same arithmetic), relative to the largest logit. The
/// CPU kernels round activations to 8 bits per block of 32, as llama.cpp does: measured 2.7e-2 to
/// 9.0e-2 on these random-weight models, whose activations have no structure. GPU backends
/// multiply the packed tensors in float: measured 0.
const FIXTURE_TOLERANCE: f32 = 0.12;
/// The same on SmolLM2 loaded `native` against `dense`: measured 1.9e-2 to 4.4e-2 on flex and up
/// to 6.5e-2 on ndarray (whose norms round differently before the 8-bit activation rounding)
/// (on the top-20 logits 0.19–0.45 of up to 31, where llama.cpp's own kernels differ from f32
/// transformers by 0.26–0.59 on the same prompts).
const SMOLLM2_TOLERANCE: f32 = 8e-2;

#[derive(Deserialize)]
struct QuantVectors {
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    quantize: std::collections::BTreeMap<String, String>,
    dequantize: std::collections::BTreeMap<String, BlockVectors>,
    q4_k: BlockVectors,
}

#[derive(Deserialize)]
struct BlockVectors {
    bytes: String,
    values: Vec<f32>,
}

fn vectors() -> QuantVectors {
    let path = fixture_dir("gguf").join("quant.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn quantisation_writes_llama_cpp_bytes() {
    let v = vectors();
    for (name, hex) in &v.quantize {
        let format = QuantFormat::from_name(name).unwrap();
        let packed = PackedMatrix::quantize(&v.values, v.rows, v.cols, format).unwrap();
        assert_eq!(packed.bytes(), unhex(hex).as_slice(), "{name}");
    }
}

#[test]
fn q5_blocks_dequantise_like_gguf() {
    for (name, block) in vectors().dequantize {
        let ty = match name.as_str() {
            "Q5_0" => GgmlType::Q5_0,
            "Q5_1" => GgmlType::Q5_1,
            other => panic!("unexpected {other}"),
        };
        let values = dequantize(ty, &unhex(&block.bytes), block.values.len()).unwrap();
        assert_eq!(values, block.values, "{name}");
    }
}

#[test]
fn q4_k_repacks_as_q4_1_within_f16_rounding() {
    let block = vectors().q4_k;
    let repacked = q4_k_to_q4_1(&unhex(&block.bytes));
    let n = block.values.len();
    let q4_1 = PackedMatrix::from_bytes(QuantFormat::Q4_1, 1, n, SharedBytes::owned(repacked))
        .unwrap()
        .dequantize();
    let scale = block.values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let error = max_abs_diff(&q4_1, &block.values);
    println!("Q4_K → Q4_1: max error {error:.2e} of max |value| {scale:.2e}");
    // Scale and offset each rounded to f16 (2^-11 relative), times at most 15 steps.
    assert!(error <= 16.0 * scale * 2f32.powi(-11), "{error} vs {scale}");
}

/// Top-1 minus top-2 logit.
fn margin(logits: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; 2];
    for &l in logits {
        if l > top[0] {
            top = [l, top[0]];
        } else if l > top[1] {
            top[1] = l;
        }
    }
    top[0] - top[1]
}

/// Greedy tokens of `model` after `ids`, and the smallest top-1/top-2 margin along the way.
fn greedy(model: &Model, ids: &[u32], steps: usize) -> (Vec<u32>, f32) {
    let decoder = model.decoder();
    let options = RunOptions::default();
    let mut cache = decoder.new_cache(ids.len() + steps);
    let mut logits = host_values(decoder.prefill(ids, &mut cache, &options).unwrap());
    let (mut tokens, mut smallest) = (Vec::new(), f32::INFINITY);
    for step in 0..steps {
        smallest = smallest.min(margin(&logits));
        let next = gemfilter_core::generate::argmax(&logits) as u32;
        tokens.push(next);
        if step + 1 < steps {
            logits = host_values(decoder.decode_step(next, &mut cache, &options).unwrap());
        }
    }
    (tokens, smallest)
}

/// `candidate` against `reference` on `ids`: relative logit error within `tolerance`; greedy
/// tokens identical when the reference's margins exceed twice the error; GemFilter kept
/// positions at `(layer, k)` identical when the boundary margin exceeds twice the score error,
/// else only near-boundary positions may differ.
fn check_close(
    label: &str,
    reference: &Model,
    candidate: &Model,
    ids: &[u32],
    steps: usize,
    selection: (usize, usize),
    tolerance: f32,
) {
    let expected = last_logits(reference, ids);
    let got = last_logits(candidate, ids);
    let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let error = max_abs_diff(&got, &expected);
    let relative = error / scale;

    let (expected_tokens, token_margin) = greedy(reference, ids, steps);
    let (tokens, _) = greedy(candidate, ids, steps);
    let tokens_must_match = token_margin > 2.0 * error;

    let (layer, k) = selection;
    let options = RunOptions::default();
    let paper = GemFilterSelector::default();
    let expected_selection =
        select_tokens(reference.decoder(), ids, layer, k, &paper, &options).unwrap();
    let selection = select_tokens(candidate.decoder(), ids, layer, k, &paper, &options).unwrap();
    let score_error = max_abs_diff(&selection.scores, &expected_selection.scores);
    let mut sorted = expected_selection.scores.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let k = k.min(ids.len());
    let boundary_margin = if k < sorted.len() {
        sorted[k - 1] - sorted[k]
    } else {
        f32::INFINITY
    };
    let positions_must_match = boundary_margin > 2.0 * score_error;
    let threshold = sorted[k - 1];
    let kept_valid = selection
        .positions
        .iter()
        .all(|&p| expected_selection.scores[p] >= threshold - 2.0 * score_error);

    println!(
        "{label}: relative logit error {relative:.2e}; tokens {} (margin {token_margin:.2e}, error {error:.2e}); \
         positions {} (boundary margin {boundary_margin:.2e}, score error {score_error:.2e})",
        if tokens == expected_tokens {
            "identical"
        } else {
            "differ"
        },
        if selection.positions == expected_selection.positions {
            "identical"
        } else {
            "differ"
        },
    );
    assert!(
        relative <= tolerance,
        "{label}: relative logit error {relative} > {tolerance}"
    );
    if tokens_must_match {
        assert_eq!(tokens, expected_tokens, "{label}: greedy tokens");
    }
    assert!(
        kept_valid,
        "{label}: a kept position lies below the boundary by more than the error"
    );
    if positions_must_match {
        assert_eq!(
            selection.positions, expected_selection.positions,
            "{label}: kept positions"
        );
    }
}

fn load(path: impl AsRef<std::path::Path>, device: &Device, weights: WeightFormat) -> Model {
    let options = LoadOptions {
        weights,
        ..LoadOptions::default()
    };
    Model::load_with(path, device, &options).expect("model loads")
}

/// Greedy steps checked per prompt: GPU backends (float arithmetic on the packed tensors, exact
/// to 1e-5 relative) check fewer, since Mesa's software Vulkan compiles every new shape slowly.
fn steps_on(device: &Device) -> usize {
    if gemfilter_core::quant::uses_host_kernels(device) {
        8
    } else {
        4
    }
}

/// Every fixture whose widths sit on the block grid, packed in every format (GPU backends: one
/// format per fixture, in turn, so that every format is still covered), against its dequantised
/// twin.
fn packed_fixtures_match_their_dequantised_twin(device: &Device) {
    let cpu = gemfilter_core::quant::uses_host_kernels(device);
    let names = FIXTURES.iter().filter(|&&n| n != "llama-tied");
    for (i, name) in names.enumerate() {
        let reference = reference(name);
        let formats = if cpu {
            QuantFormat::ALL.to_vec()
        } else {
            vec![QuantFormat::ALL[i % QuantFormat::ALL.len()]]
        };
        for format in formats {
            let packed = load(fixture_dir(name), device, WeightFormat::Packed(format));
            let twin = packed.dequantized();
            let gem = &reference.gemfilter;
            check_close(
                &format!("{name} {format}"),
                &twin,
                &packed,
                &reference.prompt_ids,
                steps_on(device),
                (gem.filter_layer, gem.top_k),
                FIXTURE_TOLERANCE,
            );
        }
    }
}

/// GGUF fixtures with Q8_0 / Q4_0 / Q4_1 tensors loaded `native` against the kernels' twin and
/// against the file dequantised to f32 (GPU backends: against the file only; their packed
/// arithmetic is the twin's up to float rounding, which `packed_fixtures_…` checks).
fn gguf_native_matches_the_dequantised_file(device: &Device) {
    let cpu = gemfilter_core::quant::uses_host_kernels(device);
    for (file, source) in [
        ("llama-gqa.gguf", "llama-gqa"),
        ("phi3-longrope.gguf", "phi3-longrope"),
        ("llama-tied.gguf", "llama-tied"),
    ] {
        let path = fixture_dir("gguf").join(file);
        let reference = reference(source);
        let gem = &reference.gemfilter;
        let native = load(&path, device, WeightFormat::Native);
        let dense = load(&path, device, WeightFormat::Dense);
        let settings = (gem.filter_layer, gem.top_k);
        let ids = &reference.prompt_ids;
        if cpu {
            let twin = native.dequantized();
            check_close(
                &format!("{file} native vs twin"),
                &twin,
                &native,
                ids,
                steps_on(device),
                settings,
                FIXTURE_TOLERANCE,
            );
        }
        check_close(
            &format!("{file} native vs dense"),
            &dense,
            &native,
            ids,
            steps_on(device),
            settings,
            FIXTURE_TOLERANCE,
        );
    }
}

#[derive(Deserialize)]
struct SmolReference {
    prompts: Vec<SmolPrompt>,
}

#[derive(Deserialize)]
struct SmolPrompt {
    ids: Vec<u32>,
}

/// SmolLM2 (Q4_1 GGUF, Q8_0 embedding) loaded `native` against the file dequantised to f32: the
/// reference prompts, 16 greedy tokens, kept positions at the calibrated layer. GPU backends
/// (float arithmetic on the packed tensors, exact to 1e-5 relative) check one prompt and 4 tokens:
/// Mesa's software Vulkan takes minutes for more.
fn smollm2_native_matches_the_dequantised_file(device: &Device) {
    let cpu = gemfilter_core::quant::uses_host_kernels(device);
    let (prompt_count, steps) = if cpu { (usize::MAX, 16) } else { (1, 4) };
    let path = smollm2_path();
    let native = load(&path, device, WeightFormat::Native);
    let dense = load(&path, device, WeightFormat::Dense);
    let prompts: SmolReference = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("smollm2").join("reference.json")).unwrap(),
    )
    .unwrap();
    for (i, prompt) in prompts.prompts.iter().take(prompt_count).enumerate() {
        let k = prompt.ids.len() / 2;
        check_close(
            &format!("smollm2 prompt {i} native vs dense"),
            &dense,
            &native,
            &prompt.ids,
            steps,
            (14, k),
            SMOLLM2_TOLERANCE,
        );
    }
}

fn widths_off_the_block_grid_are_refused(device: &Device) {
    let options = LoadOptions {
        weights: WeightFormat::Packed(QuantFormat::Q4_0),
        ..LoadOptions::default()
    };
    let err = Model::load_with(fixture_dir("llama-tied"), device, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot store tensor `model.")
            && err.contains("as q4_0")
            && err.contains("blocks of 32"),
        "{err}"
    );
}

/// Packed weights placed on the device hold the host blocks' values (exactly; Q4_1 up to the f32
/// rounding of its values rewritten as `(nibble − 8)·d + (m + 8·d)`).
fn device_blocks_hold_the_host_values(device: &Device) {
    use gemfilter_core::nn::Projection;
    use gemfilter_core::quant::{QuantizedWeight, uses_host_kernels};
    let v = vectors();
    for format in QuantFormat::ALL {
        let matrix = PackedMatrix::quantize(&v.values, v.rows, v.cols, format).unwrap();
        let mut projection = Projection::dense(v.cols, v.rows, false, device);
        projection
            .pack(std::sync::Arc::new(matrix.clone()), device)
            .unwrap();
        let on_host = matches!(
            &projection,
            Projection::Quantized(q) if matches!(q.weight, QuantizedWeight::Host(_))
        );
        assert_eq!(on_host, uses_host_kernels(device));
        let expected = matrix.dequantize();
        let Projection::Dense(dense) =
            projection.dequantized(gemfilter_models::burn::tensor::DType::F32, device)
        else {
            panic!("dequantized projections are dense");
        };
        // Linear weights are [in, out]: transpose back to the [out, in] rows of the blocks.
        let got: Vec<f32> = dense
            .weight
            .val()
            .transpose()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let error = max_abs_diff(&got, &expected);
        let allowed = if format == QuantFormat::Q4_1 && !on_host {
            4.0 * f32::EPSILON * scale
        } else {
            0.0
        };
        assert!(error <= allowed, "{format} on the device: error {error}");
    }
}

on_every_backend!(
    device_blocks_hold_the_host_values,
    packed_fixtures_match_their_dequantised_twin,
    gguf_native_matches_the_dequantised_file,
    smollm2_native_matches_the_dequantised_file,
    widths_off_the_block_grid_are_refused,
);
