//! SnapKV and H2O against an independent Python implementation of their reference code
//! (`scripts/reference/make_kv_compression_reference.py`): identical kept positions per layer
//! and head, decoding on the compressed cache with the same logits and greedy tokens.

use gemfilter_core::{
    CoreError, GenerationConfig, H2o, HeadSharing, KvCompressor, Method, RunOptions, SnapKv,
    generate,
};
use gemfilter_models::Model;
use gemfilter_tests::{
    Device, fixture_dir, host_values, max_abs_diff, on_every_backend, reference,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct KvReference {
    prompt_positions: usize,
    methods: Vec<MethodReference>,
}

#[derive(Debug, Deserialize)]
struct MethodReference {
    name: String,
    kind: String,
    budget: usize,
    recent: usize,
    kernel: Option<usize>,
    heads: String,
    kept: Vec<Vec<Vec<usize>>>,
    score_margin: f32,
    decode_step_logits: Vec<f32>,
    greedy: Vec<u32>,
    greedy_min_margin: f32,
}

impl MethodReference {
    fn compressor(&self) -> Box<dyn KvCompressor> {
        let heads = match self.heads.as_str() {
            "query" => HeadSharing::PerQueryHead,
            "kv" => HeadSharing::PerKvHead,
            other => panic!("unknown head sharing {other}"),
        };
        match self.kind.as_str() {
            "snapkv" => Box::new(SnapKv {
                window: self.recent,
                kernel: self.kernel.expect("snapkv has a kernel"),
                heads,
                ..SnapKv::new(self.budget)
            }),
            "h2o" => Box::new(H2o {
                recent: self.recent,
                heads,
                ..H2o::new(self.budget)
            }),
            other => panic!("unknown method {other}"),
        }
    }
}

fn kv_reference(name: &str) -> KvReference {
    let path = fixture_dir(name).join("kv_compression.json");
    let text = std::fs::read_to_string(&path).expect("kv_compression.json exists");
    serde_json::from_str(&text).expect("kv_compression.json parses")
}

/// Kept positions, the first decode step's logits and 8 greedy tokens equal the reference's.
fn compression_matches_the_reference(device: &Device) {
    let model = Model::load(fixture_dir("llama-gqa"), device).expect("fixture loads");
    let decoder = model.decoder();
    let ids = reference("llama-gqa").prompt_ids;
    let expected = kv_reference("llama-gqa");
    assert_eq!(expected.prompt_positions, ids.len());
    for method in &expected.methods {
        let compressor = method.compressor();
        let mut cache = decoder.new_cache(method.budget + 1);
        let (_, outcome) = decoder
            .prefill_compressed(
                &ids,
                &mut cache,
                compressor.as_ref(),
                &RunOptions::default(),
            )
            .unwrap();
        assert_eq!(
            outcome.kept.len(),
            method.kept.len(),
            "{}: layers",
            method.name
        );
        for (layer, (got, want)) in outcome.kept.iter().zip(&method.kept).enumerate() {
            assert_eq!(
                got, want,
                "{}: layer {layer} kept other positions (reference score margin {:.1e})",
                method.name, method.score_margin
            );
        }
        assert_eq!((cache.len(), cache.position()), (method.budget, ids.len()));
        let first = generate(
            decoder,
            &ids,
            Method::KvCompressed(compressor.as_ref()),
            &GenerationConfig::greedy(1, Vec::new()),
        )
        .unwrap()
        .tokens[0];
        let step = host_values(
            decoder
                .decode_step(first, &mut cache, &RunOptions::default())
                .unwrap(),
        );
        let error = max_abs_diff(&step, &method.decode_step_logits);
        println!(
            "{}: decode-step max |logit error| {error:.2e}, greedy margin {:.3}",
            method.name, method.greedy_min_margin
        );
        // Two passes (prompt, then the step on a gathered cache): parity.rs allows 1e-4 for one.
        assert!(
            error < 2.5e-4,
            "{}: decode step differs by {error}",
            method.name
        );

        let generation = generate(
            decoder,
            &ids,
            Method::KvCompressed(compressor.as_ref()),
            &GenerationConfig::greedy(method.greedy.len(), Vec::new()),
        )
        .unwrap();
        assert_eq!(
            generation.tokens, method.greedy,
            "{}: greedy tokens",
            method.name
        );
        assert_eq!(generation.compression.unwrap().entries, method.budget);
    }
}

/// A budget covering the prompt keeps everything: the answer is full attention's.
fn budget_above_prompt_is_full_attention(device: &Device) {
    let model = Model::load(fixture_dir("llama-gqa"), device).expect("fixture loads");
    let decoder = model.decoder();
    let reference = reference("llama-gqa");
    let ids = &reference.prompt_ids;
    let config = GenerationConfig::greedy(reference.greedy_full.len(), Vec::new());
    for compressor in [
        &SnapKv::new(ids.len()) as &dyn KvCompressor,
        &H2o::new(ids.len() + 10),
    ] {
        let generation = generate(decoder, ids, Method::KvCompressed(compressor), &config).unwrap();
        assert_eq!(
            generation.tokens,
            reference.greedy_full,
            "{}",
            compressor.name()
        );
        let outcome = generation.compression.unwrap();
        assert!(!outcome.compressed());
        assert_eq!(outcome.retention(0), 1.0);
    }
}

/// Parameters a method cannot work with, and sliding windows it cannot mask, are errors.
fn bad_compression_parameters_are_errors(device: &Device) {
    let model = Model::load(fixture_dir("llama-gqa"), device).expect("fixture loads");
    let ids = reference("llama-gqa").prompt_ids;
    let config = GenerationConfig::greedy(2, Vec::new());
    for (compressor, needle) in [
        (&SnapKv::new(32) as &dyn KvCompressor, "must exceed"),
        (
            &SnapKv {
                kernel: 4,
                ..SnapKv::new(64)
            },
            "kernel odd",
        ),
        (&H2o::new(16), "must exceed"),
    ] {
        let error = generate(
            model.decoder(),
            &ids,
            Method::KvCompressed(compressor),
            &config,
        )
        .unwrap_err();
        assert!(
            matches!(&error, CoreError::InvalidParameter(m) if m.contains(needle)),
            "{error}"
        );
    }
    let windowed = Model::load(fixture_dir("mistral-window"), device).expect("fixture loads");
    let ids = reference("mistral-window").prompt_ids;
    let error = generate(
        windowed.decoder(),
        &ids,
        Method::KvCompressed(&SnapKv::new(40)),
        &config,
    )
    .unwrap_err();
    assert!(error.to_string().contains("sliding window"), "{error}");
    // A budget covering the prompt keeps it whole: the window still masks exactly.
    let reference = reference("mistral-window");
    let whole = generate(
        windowed.decoder(),
        &ids,
        Method::KvCompressed(&SnapKv::new(ids.len())),
        &GenerationConfig::greedy(reference.greedy_full.len(), Vec::new()),
    )
    .unwrap();
    assert_eq!(whole.tokens, reference.greedy_full);
}

on_every_backend!(
    compression_matches_the_reference,
    budget_above_prompt_is_full_attention,
    bad_compression_parameters_are_errors,
);
