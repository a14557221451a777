//! Propagation (the kept tokens carry on from the filter layer) and multi-stage selection: with
//! every token kept, propagation is full attention; with no early stage, a staged selector is
//! GemFilter's; pruning keeps the contracts (budget, last position, smaller cache, errors).

use gemfilter_core::{
    CoreError, EarlyKv, GemFilterSelector, GenerationConfig, HeadNormalization, Method,
    QuestionWindowSelector, RunOptions, SelectionStage, SpanRule, SpanSelector, StagedSelector,
    TokenSelector, generate, select_tokens,
};
use gemfilter_models::Model;
use gemfilter_tests::{
    Device, fixture_dir, host_values, max_abs_diff, on_every_backend, reference,
};

fn load(name: &str, device: &Device) -> Model {
    Model::load(fixture_dir(name), device).expect("fixture loads")
}

/// Greedy decoding of `new` tokens with no end-of-sequence token: every method decodes as far.
fn config(new: usize) -> GenerationConfig {
    GenerationConfig::greedy(new, Vec::new())
}

/// Propagation keeping every token is full attention: the same first-token logits, the same
/// cache (both early-KV choices), the same greedy tokens and the same logits at every later
/// step, on every fixture architecture (GQA, llama3 rope, longrope, tied embeddings, a
/// sliding window shorter than the prompt).
fn propagation_keeping_every_token_equals_full_attention(device: &Device) {
    let options = RunOptions::default();
    for name in [
        "llama-gqa",
        "llama3-rope",
        "phi3-longrope",
        "llama-tied",
        "mistral-window",
    ] {
        let model = load(name, device);
        let decoder = model.decoder();
        let ids = reference(name).prompt_ids;
        let n = ids.len();
        let steps = 5;
        let mut full_cache = decoder.new_cache(n + steps);
        let full_first = host_values(decoder.prefill(&ids, &mut full_cache, &options).unwrap());
        let full = generate(decoder, &ids, Method::Full, &config(steps)).unwrap();
        let selector = GemFilterSelector::default();
        for filter_layer in [1, decoder.config().num_layers - 1] {
            for early_kv in [EarlyKv::All, EarlyKv::Kept] {
                let what = format!("{name}, layer {filter_layer}, early KV {early_kv:?}");
                let pass = decoder
                    .staged_pass(&ids, filter_layer, n, &selector, true, true, &options)
                    .unwrap();
                assert_eq!(pass.selection.positions, (0..n).collect::<Vec<_>>());
                let (first, mut cache) =
                    decoder.propagate(pass, early_kv, steps, &options).unwrap();
                let error = max_abs_diff(&host_values(first), &full_first);
                println!("{what}: first-token logits differ by {error:.2e}");
                assert!(error < 1e-4, "{what}: first-token logits differ by {error}");
                assert_eq!(cache.position(), n, "{what}");
                assert_eq!(cache.layer_lens(), full_cache.layer_lens(), "{what}");
                // Later steps on the propagated cache and on full attention's.
                let mut full_steps = decoder.new_cache(n + steps);
                decoder.prefill(&ids, &mut full_steps, &options).unwrap();
                for &token in &full.tokens[..steps - 1] {
                    let here =
                        host_values(decoder.decode_step(token, &mut cache, &options).unwrap());
                    let there = host_values(
                        decoder
                            .decode_step(token, &mut full_steps, &options)
                            .unwrap(),
                    );
                    let error = max_abs_diff(&here, &there);
                    assert!(error < 1e-4, "{what}: decode logits differ by {error}");
                }
                let propagated = generate(
                    decoder,
                    &ids,
                    Method::Propagate {
                        filter_layer,
                        top_k: n,
                        selector: &selector,
                        early_kv,
                    },
                    &config(steps),
                )
                .unwrap();
                assert_eq!(propagated.tokens, full.tokens, "{what}: tokens");
                assert_eq!(propagated.kept_tokens, n);
                assert!(!propagated.selection_skipped);
                assert_eq!(propagated.kv_cache_bytes, full.kv_cache_bytes, "{what}");
            }
        }
    }
}

/// A staged selector with no early stage, and one whose early stage keeps every position, make
/// exactly GemFilter's selection (positions, and scores within float noise) and answer.
fn one_stage_spec_equals_plain_gemfilter(device: &Device) {
    let options = RunOptions::default();
    let model = load("llama3-rope", device);
    let decoder = model.decoder();
    let ids = reference("llama3-rope").prompt_ids;
    let n = ids.len();
    let (filter_layer, top_k) = (2, 24);
    let selectors: Vec<Box<dyn TokenSelector>> = vec![
        Box::new(GemFilterSelector::default()),
        Box::new(QuestionWindowSelector::new(
            4,
            HeadNormalization::MaxOverHeads,
        )),
        Box::new(SpanSelector::new(
            GemFilterSelector::default(),
            SpanRule::Segments {
                starts: (0..n).step_by(9).collect(),
                max_len: 6,
            },
        )),
    ];
    for selector in &selectors {
        let plain = select_tokens(decoder, &ids, filter_layer, top_k, selector, &options).unwrap();
        let single = decoder
            .staged_selection(&ids, filter_layer, top_k, selector, &options)
            .unwrap();
        assert_eq!(single.positions, plain.positions, "{}", selector.name());
        let error = max_abs_diff(&single.scores, &plain.scores);
        assert!(
            error < 1e-4,
            "{}: scores differ by {error}",
            selector.name()
        );
        let keep_all = StagedSelector::new(selector, vec![SelectionStage { layer: 1, keep: n }]);
        let staged =
            select_tokens(decoder, &ids, filter_layer, top_k, &keep_all, &options).unwrap();
        assert_eq!(staged.positions, plain.positions, "{}", keep_all.name());
        for one_stage in [
            &StagedSelector::new(selector, vec![]) as &dyn TokenSelector,
            &keep_all,
        ] {
            let answer = |selector: &dyn TokenSelector| {
                generate(
                    decoder,
                    &ids,
                    Method::GemFilter {
                        filter_layer,
                        top_k,
                        selector,
                    },
                    &config(4),
                )
                .unwrap()
            };
            let (ours, theirs) = (answer(one_stage), answer(selector));
            assert_eq!(ours.tokens, theirs.tokens, "{}", one_stage.name());
            assert_eq!(ours.selection.unwrap().positions, plain.positions);
        }
    }
}

/// Pruned propagation: k tokens kept (the last one always among them), decoding from position
/// n, a smaller cache with the kept early layers; multi-stage selections keep k positions out
/// of the earlier stage's, and the staged pass checks its stages.
fn pruned_propagation_and_stages_keep_their_contracts(device: &Device) {
    let options = RunOptions::default();
    let model = load("llama-gqa", device);
    let decoder = model.decoder();
    let ids = reference("llama-gqa").prompt_ids;
    let n = ids.len();
    let (filter_layer, top_k) = (2, 16);
    let selector = GemFilterSelector::default();
    let mut sizes = Vec::new();
    for early_kv in [EarlyKv::All, EarlyKv::Kept] {
        let out = generate(
            decoder,
            &ids,
            Method::Propagate {
                filter_layer,
                top_k,
                selector: &selector,
                early_kv,
            },
            &config(4),
        )
        .unwrap();
        let kept = out.selection.unwrap().positions;
        assert_eq!(kept.len(), top_k);
        assert_eq!(*kept.last().unwrap(), n - 1, "the last position is kept");
        assert_eq!(out.tokens.len(), 4);
        sizes.push(out.kv_cache_bytes);
    }
    assert!(sizes[1] < sizes[0], "kept early KV is smaller: {sizes:?}");

    // Two pruning stages, then the final selection.
    let stages = vec![
        SelectionStage { layer: 1, keep: 48 },
        SelectionStage { layer: 2, keep: 32 },
    ];
    let staged = StagedSelector::new(
        QuestionWindowSelector::new(4, HeadNormalization::Sum),
        stages,
    );
    let selection = select_tokens(decoder, &ids, 3, top_k, &staged, &options).unwrap();
    assert_eq!(selection.positions.len(), top_k);
    let dropped = selection
        .scores
        .iter()
        .filter(|s| **s == f32::NEG_INFINITY)
        .count();
    assert_eq!(
        dropped,
        n - 32,
        "scored at the final stage: the 32 kept by the last stage"
    );
    for &p in &selection.positions {
        assert!(selection.scores[p].is_finite());
    }
    let out = generate(
        decoder,
        &ids,
        Method::Propagate {
            filter_layer: 3,
            top_k,
            selector: &staged,
            early_kv: EarlyKv::All,
        },
        &config(3),
    )
    .unwrap();
    assert_eq!(out.kept_tokens, top_k);

    // Stages that cannot run are refused with the reason.
    let refused = |stages: Vec<SelectionStage>, filter_layer: usize| {
        let selector = StagedSelector::new(GemFilterSelector::default(), stages);
        match select_tokens(decoder, &ids, filter_layer, top_k, &selector, &options) {
            Err(CoreError::InvalidSelector { reason, .. }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    };
    let stage = |layer, keep| SelectionStage { layer, keep };
    assert!(refused(vec![stage(1, 8)], 3).contains("cannot keep more"));
    assert!(refused(vec![stage(3, 64)], 3).contains("must increase"));
    assert!(refused(vec![stage(2, 64), stage(1, 32)], 3).contains("must increase"));
    assert!(refused(vec![stage(1, 0)], 3).contains("keeps nothing"));
    // A sliding window shorter than the prompt cannot mask a pruned pass.
    let windowed = load("mistral-window", device);
    let ids = reference("mistral-window").prompt_ids;
    let error = generate(
        windowed.decoder(),
        &ids,
        Method::Propagate {
            filter_layer: 2,
            top_k,
            selector: &selector,
            early_kv: EarlyKv::All,
        },
        &config(2),
    )
    .unwrap_err();
    assert!(error.to_string().contains("sliding window"), "{error}");
}

on_every_backend!(
    propagation_keeping_every_token_equals_full_attention,
    one_stage_spec_equals_plain_gemfilter,
    pruned_propagation_and_stages_keep_their_contracts,
);
