//! SnapKV and H2O against an independent Python implementation of their reference code
//! (`scripts/reference/make_kv_compression_reference.py`): identical kept positions per layer
//! and head, decoding on the compressed cache with the same logits and greedy tokens.

use gemfilter_core::{
    CoreError, GenerationConfig, H2o, HeadSharing, KvCompressor, Method, RunOptions, SnapKv,
    TokenControl, generate, generate_shared_prefill,
};
use gemfilter_models::{KvMethod, Mode, Model, Request};
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

/// One prefill serving full attention, SnapKV and H2O (at several budgets and head sharings)
/// gives each the answer, kept positions and first-token logits of its own run.
fn one_prefill_serves_every_method(device: &Device) {
    let model = Model::load(fixture_dir("llama-gqa"), device).expect("fixture loads");
    let decoder = model.decoder();
    let reference = reference("llama-gqa");
    let ids = &reference.prompt_ids;
    let config = GenerationConfig::greedy(reference.greedy_full.len(), Vec::new());
    let per_kv = SnapKv {
        heads: HeadSharing::PerKvHead,
        ..SnapKv::new(44)
    };
    let (snap, h2o, whole) = (SnapKv::new(40), H2o::new(48), SnapKv::new(ids.len()));
    let compressors: Vec<&dyn KvCompressor> = vec![&snap, &h2o, &per_kv, &whole];
    let mut seen = vec![0usize; compressors.len() + 1];
    let shared = generate_shared_prefill(decoder, ids, true, &compressors, &config, &mut |b, _| {
        seen[b] += 1;
        TokenControl::Continue
    })
    .unwrap();
    assert_eq!(shared.len(), compressors.len() + 1);
    assert_eq!(shared[0].tokens, reference.greedy_full, "full attention");
    assert!(shared[0].compression.is_none());
    for (i, compressor) in compressors.iter().enumerate() {
        let alone = generate(decoder, ids, Method::KvCompressed(*compressor), &config).unwrap();
        let together = &shared[i + 1];
        assert_eq!(together.tokens, alone.tokens, "{}", compressor.name());
        assert_eq!(
            together.compression,
            alone.compression,
            "{}: kept positions",
            compressor.name()
        );
        assert_eq!(seen[i + 1], together.tokens.len());
    }
    println!(
        "shared prefill {:?}; tokens per branch {seen:?}",
        shared[0].timings.prefill
    );

    // The model-level call: answers in the order asked, as lone runs give them.
    let request = Request {
        max_new_tokens: 4,
        ..Request::full()
    };
    let modes = [
        Mode::KvCompressed {
            method: KvMethod::H2o,
            budget: 48,
            heads: HeadSharing::PerQueryHead,
        },
        Mode::Full,
        Mode::KvCompressed {
            method: KvMethod::SnapKv,
            budget: 40,
            heads: HeadSharing::PerQueryHead,
        },
    ];
    let answers = model.generate_shared(ids, &modes, &request).unwrap();
    for (mode, answer) in modes.iter().zip(&answers) {
        let alone = model
            .generate_ids(
                ids,
                &Request {
                    mode: *mode,
                    ..request.clone()
                },
            )
            .unwrap();
        assert_eq!(
            answer.generation.tokens, alone.generation.tokens,
            "{mode:?}"
        );
        assert_eq!(answer.text, alone.text, "{mode:?}");
        assert_eq!(answer.top_k, alone.top_k, "{mode:?}");
    }
    let error = model
        .generate_shared(ids, &[Mode::Full, Mode::Full], &request)
        .unwrap_err();
    assert!(error.to_string().contains("twice"), "{error}");
    let error = model
        .generate_shared(
            ids,
            &[Mode::GemFilter {
                filter_layer: None,
                top_k: 8,
            }],
            &request,
        )
        .unwrap_err();
    assert!(error.to_string().contains("selection pass"), "{error}");
}

on_every_backend!(
    one_prefill_serves_every_method,
    compression_matches_the_reference,
    budget_above_prompt_is_full_attention,
    bad_compression_parameters_are_errors,
);
