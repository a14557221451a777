//! Behaviour of the decoder and the generation pipeline beyond parity: cache and blocking
//! equivalences, early exit, selector contract, stopping, sampling, parameter errors.

use std::sync::Arc;

use gemfilter_core::{
    CoreError, FinishReason, Flow, GemFilterSelector, GenerationConfig, HeadNormalization,
    LayerHook, LayerObserver, LayerView, LayerVoteSelector, Method, NoCache, NoHook, Probe,
    QuestionWindowSelector, RunOptions, Sampling, Selection, SpanRule, SpanSelector, TokenSelector,
    VoteRule, generate, select_tokens,
};
use gemfilter_models::{GAP_MARKER, Model, Request};
use gemfilter_tests::{
    Device, fixture_dir, host_values, max_abs_diff, on_every_backend, reference,
};

/// Keeps the probe of every layer a pass goes through.
struct All(Vec<Probe>);

impl LayerObserver for All {
    fn wants(&self, _layer: usize) -> bool {
        true
    }
    fn observe(&mut self, probe: Probe) {
        self.0.push(probe);
    }
}

fn load(name: &str, device: &Device) -> Model {
    Model::load(fixture_dir(name), device).expect("fixture loads")
}

/// Attention over blocks of queries (bounded memory) gives the logits of one big block.
fn blocked_attention_matches_unblocked(device: &Device) {
    let model = load("llama3-rope", device);
    let ids = reference("llama3-rope").prompt_ids;
    let whole = host_values(
        model
            .decoder()
            .last_logits(&ids, &RunOptions::default())
            .unwrap(),
    );
    // 4 heads × 164 keys per row: 700 scores per block forces one query row per block.
    let blocked_options = RunOptions {
        fused_attention: false,
        max_scores_per_block: 700,
        ..RunOptions::default()
    };
    let blocked = host_values(model.decoder().last_logits(&ids, &blocked_options).unwrap());
    let error = max_abs_diff(&whole, &blocked);
    assert!(error < 1e-4, "blocked attention differs by {error}");
}

/// A prompt prefilled in chunks through the cache gives the logits of one chunk, with and without
/// a sliding window, and leaves the cache where one chunk would.
fn chunked_prefill_matches_one_chunk(device: &Device) {
    for name in ["llama-gqa", "mistral-window"] {
        let model = load(name, device);
        let ids = reference(name).prompt_ids;
        let mut cache = model.decoder().new_cache(ids.len() + 1);
        let whole = host_values(
            model
                .decoder()
                .prefill(&ids, &mut cache, &RunOptions::default())
                .unwrap(),
        );
        let chunked_options = RunOptions {
            prefill_chunk: Some(7),
            ..RunOptions::default()
        };
        let mut chunked_cache = model.decoder().new_cache(ids.len() + 1);
        let chunked = host_values(
            model
                .decoder()
                .prefill(&ids, &mut chunked_cache, &chunked_options)
                .unwrap(),
        );
        let error = max_abs_diff(&whole, &chunked);
        assert!(error < 1e-4, "{name}: chunked prefill differs by {error}");
        assert_eq!(chunked_cache.len(), ids.len());
        let step = host_values(
            model
                .decoder()
                .decode_step(ids[0], &mut chunked_cache, &chunked_options)
                .unwrap(),
        );
        let expected = host_values(
            model
                .decoder()
                .decode_step(ids[0], &mut cache, &RunOptions::default())
                .unwrap(),
        );
        assert!(
            max_abs_diff(&step, &expected) < 1e-4,
            "{name}: decoding after chunks"
        );
    }
}

/// The selection pass in chunks hands the observer the probes of one pass: same keys at every
/// observed layer, same last queries, same kept positions.
fn chunked_selection_pass_matches_one_pass(device: &Device) {
    for name in ["llama-gqa", "mistral-window"] {
        let model = load(name, device);
        let reference = reference(name);
        let ids = reference.prompt_ids;
        let gem = reference.gemfilter;
        let stop = gem.filter_layer;
        let mut whole = All(Vec::new());
        model
            .decoder()
            .observe(&ids, stop, 6, &mut whole, &RunOptions::default())
            .unwrap();
        for chunk in [7, 40] {
            let chunked_options = RunOptions {
                selection_chunk: Some(chunk),
                ..RunOptions::default()
            };
            let mut chunked = All(Vec::new());
            model
                .decoder()
                .observe(&ids, stop, 6, &mut chunked, &chunked_options)
                .unwrap();
            assert_eq!(chunked.0.len(), whole.0.len(), "{name}: observed layers");
            for (a, b) in whole.0.iter().zip(&chunked.0) {
                assert_eq!(a.layer, b.layer);
                assert_eq!(a.keys.dims(), b.keys.dims());
                assert_eq!(a.queries.dims(), b.queries.dims());
                let keys = max_abs_diff(
                    &host_values(a.keys.clone().reshape([-1])),
                    &host_values(b.keys.clone().reshape([-1])),
                );
                let queries = max_abs_diff(
                    &host_values(a.queries.clone().reshape([-1])),
                    &host_values(b.queries.clone().reshape([-1])),
                );
                assert!(
                    keys < 1e-4 && queries < 1e-4,
                    "{name} chunk {chunk} layer {}: {keys} {queries}",
                    a.layer
                );
            }
            let selection = select_tokens(
                model.decoder(),
                &ids,
                stop,
                gem.top_k,
                &GemFilterSelector::default(),
                &chunked_options,
            )
            .unwrap();
            assert_eq!(selection.positions, gem.positions, "{name} chunk {chunk}");
        }
    }
}

/// Prefill of a prefix followed by cached single-token steps gives, at every step, the logits
/// of a fresh forward over the same tokens.
fn cached_decoding_matches_recomputation(device: &Device) {
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let decoder = model.decoder();
    let split = ids.len() - 4;
    let mut cache = decoder.new_cache(ids.len());
    let mut logits = host_values(
        decoder
            .prefill(&ids[..split], &mut cache, &RunOptions::default())
            .unwrap(),
    );
    for end in split..=ids.len() {
        let fresh = host_values(
            decoder
                .last_logits(&ids[..end], &RunOptions::default())
                .unwrap(),
        );
        let error = max_abs_diff(&logits, &fresh);
        assert!(
            error < 1e-4,
            "cached logits at length {end} differ by {error}"
        );
        if end < ids.len() {
            logits = host_values(
                decoder
                    .decode_step(ids[end], &mut cache, &RunOptions::default())
                    .unwrap(),
            );
        }
    }
    assert_eq!(cache.len(), ids.len());
    let full = decoder
        .decode_step(0, &mut cache, &RunOptions::default())
        .unwrap_err();
    assert!(matches!(full, CoreError::CacheFull { .. }), "{full:?}");
}

/// The early-exit probe at layer r equals what a pass observing every layer sees at r.
fn early_exit_probe_matches_observed_layer(device: &Device) {
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let decoder = model.decoder();
    let layers = decoder.config().num_layers;
    let mut all = All(Vec::new());
    decoder
        .observe(&ids, layers - 1, 3, &mut all, &RunOptions::default())
        .unwrap();
    assert_eq!(all.0.len(), layers);
    let probe = decoder.probe(&ids, 2, 3, &RunOptions::default()).unwrap();
    let seen = &all.0[2];
    assert_eq!(seen.layer, 2);
    assert_eq!(probe.queries.dims(), [4, 3, 16]);
    assert_eq!(probe.keys.dims(), [2, ids.len(), 16]);
    let flat = |t: &gemfilter_core::burn::tensor::Tensor<3>| -> Vec<f32> {
        t.clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    assert!(max_abs_diff(&flat(&probe.queries), &flat(&seen.queries)) < 1e-6);
    assert!(max_abs_diff(&flat(&probe.keys), &flat(&seen.keys)) < 1e-6);
}

/// A pass a hook stopped hands back the hidden state entering that layer; running the remaining
/// layers from it gives the logits of one uninterrupted pass (what propagation builds on).
fn stopped_pass_resumes_to_the_same_logits(device: &Device) {
    struct StopAt(usize);
    impl LayerHook for StopAt {
        fn at_layer(&mut self, view: &LayerView<'_>) -> Flow {
            if view.layer == self.0 {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }
    }
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let decoder = model.decoder();
    let options = RunOptions::default();
    let layers = decoder.config().num_layers;
    let whole = host_values(decoder.last_logits(&ids, &options).unwrap());
    for stop in [0, 2, layers - 1] {
        let pass = decoder
            .forward(&ids, layers, &mut NoCache, &mut StopAt(stop), &options)
            .unwrap();
        assert_eq!(pass.next_layer, stop);
        let rope = decoder.rope().tables(0, ids.len(), decoder.dtype());
        let rest = decoder
            .run_layers(
                pass.hidden,
                &rope,
                stop..layers,
                &mut NoCache,
                &mut NoHook,
                &options,
            )
            .unwrap();
        assert_eq!(rest.next_layer, layers);
        let error = max_abs_diff(&whole, &host_values(decoder.logits(rest.hidden)));
        assert!(
            error < 1e-5,
            "resumed at layer {stop}: logits differ by {error}"
        );
    }
}

/// With k ≥ n GemFilter keeps everything and answers exactly like full attention, without a
/// selection pass (its result is known); every built-in selector does keep everything there, and
/// a selector that says it may drop tokens still gets its pass.
fn budget_above_prompt_keeps_everything(device: &Device) {
    let model = load("llama-tied", device);
    let ids = reference("llama-tied").prompt_ids;
    let n = ids.len();
    let options = RunOptions::default();
    let selectors: Vec<Box<dyn TokenSelector>> = vec![
        Box::new(GemFilterSelector::default()),
        Box::new(QuestionWindowSelector::new(8, HeadNormalization::Softmax)),
        Box::new(LayerVoteSelector::new(
            vec![0, 1],
            VoteRule::RankSum,
            GemFilterSelector::default(),
        )),
        Box::new(SpanSelector::new(
            GemFilterSelector::default(),
            SpanRule::Radius(2),
        )),
    ];
    for selector in &selectors {
        assert!(selector.keeps_every_token_within_budget());
        for budget in [n, n + 50] {
            let selection =
                select_tokens(model.decoder(), &ids, 1, budget, selector, &options).unwrap();
            assert_eq!(
                selection.positions,
                (0..n).collect::<Vec<_>>(),
                "{} with budget {budget}",
                selector.name()
            );
        }
    }

    let config = GenerationConfig::greedy(6, Vec::new());
    let selector = GemFilterSelector::default();
    let full = generate(model.decoder(), &ids, Method::Full, &config).unwrap();
    assert!(!full.selection_skipped);
    for top_k in [n, 10_000] {
        let method = Method::GemFilter {
            filter_layer: 1,
            top_k,
            selector: &selector,
        };
        let gem = generate(model.decoder(), &ids, method, &config).unwrap();
        assert!(
            gem.selection_skipped,
            "k {top_k} ≥ n {n}: no selection pass"
        );
        assert_eq!(gem.tokens, full.tokens);
        assert_eq!(gem.kept_tokens, n);
        assert_eq!(gem.selection.unwrap().positions, (0..n).collect::<Vec<_>>());
    }
    let method = Method::GemFilter {
        filter_layer: 1,
        top_k: n - 1,
        selector: &selector,
    };
    let gem = generate(model.decoder(), &ids, method, &config).unwrap();
    assert!(!gem.selection_skipped, "k < n needs the pass");

    /// Keeps the last token only, whatever the budget.
    struct LastOnly;
    impl TokenSelector for LastOnly {
        fn name(&self) -> &str {
            "last-only"
        }
        fn keeps_every_token_within_budget(&self) -> bool {
            false
        }
        fn select(&self, probe: &Probe, _budget: usize) -> gemfilter_core::Result<Selection> {
            let n = probe.num_positions();
            Ok(Selection {
                positions: vec![n - 1],
                scores: vec![0.0; n],
            })
        }
    }
    let method = Method::GemFilter {
        filter_layer: 1,
        top_k: 10_000,
        selector: &LastOnly,
    };
    let gem = generate(model.decoder(), &ids, method, &config).unwrap();
    assert!(!gem.selection_skipped);
    assert_eq!(gem.selection.unwrap().positions, vec![n - 1]);
}

/// Generation stops before the first EOS token, or at max_new_tokens.
fn stops_at_eos_or_budget(device: &Device) {
    let model = load("llama-gqa", device);
    let r = reference("llama-gqa");
    let greedy = &r.greedy_full;
    let stop_at = greedy
        .iter()
        .position(|t| greedy.iter().filter(|u| *u == t).count() == 1 && greedy[0] != *t)
        .expect("a token occurring once");
    let config = GenerationConfig::greedy(8, vec![9999, greedy[stop_at]]);
    let out = generate(model.decoder(), &r.prompt_ids, Method::Full, &config).unwrap();
    assert_eq!(out.tokens, greedy[..stop_at].to_vec());
    assert_eq!(out.finish_reason, FinishReason::Eos);

    let config = GenerationConfig::greedy(3, Vec::new());
    let out = generate(model.decoder(), &r.prompt_ids, Method::Full, &config).unwrap();
    assert_eq!(out.tokens, greedy[..3].to_vec());
    assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
}

/// Seeded sampling is reproducible; a tiny nucleus reduces to greedy.
fn sampling_is_seeded(device: &Device) {
    let model = load("llama-gqa", device);
    let r = reference("llama-gqa");
    let sample = |seed: u64, temperature: f32, top_p: f32| {
        let config = GenerationConfig {
            max_new_tokens: 8,
            eos_token_ids: Vec::new(),
            sampling: Sampling::TopP {
                temperature,
                top_p,
                seed,
            },
            run: RunOptions::default(),
        };
        generate(model.decoder(), &r.prompt_ids, Method::Full, &config)
            .unwrap()
            .tokens
    };
    assert_eq!(sample(7, 1.5, 0.95), sample(7, 1.5, 0.95));
    let draws: Vec<Vec<u32>> = (0..4).map(|seed| sample(seed, 3.0, 1.0)).collect();
    assert!(
        draws.iter().any(|d| d != &draws[0]),
        "different seeds never differed"
    );
    assert_eq!(sample(3, 1.0, 1e-6), r.greedy_full);
}

/// A user-defined selector plugs into the same pipeline.
fn custom_selector_runs_through_the_pipeline(device: &Device) {
    struct LastTokens;
    impl TokenSelector for LastTokens {
        fn name(&self) -> &str {
            "last-tokens"
        }
        fn select(&self, probe: &Probe, budget: usize) -> gemfilter_core::Result<Selection> {
            let n = probe.num_positions();
            let k = budget.min(n);
            Ok(Selection {
                positions: (n - k..n).collect(),
                scores: (0..n).map(|i| i as f32).collect(),
            })
        }
    }
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let request = Request {
        selector: Some(Arc::new(LastTokens)),
        max_new_tokens: 4,
        ..Request::gemfilter(10)
    };
    let answer = model.generate_ids(&ids, &request).unwrap();
    let n = ids.len();
    assert_eq!(
        answer.generation.selection.as_ref().unwrap().positions,
        (n - 10..n).collect::<Vec<_>>()
    );
    assert_eq!(
        answer.filter_layer,
        Some(2),
        "fallback layer of a 4-layer model"
    );
    let kept = model.kept_text(&answer).unwrap();
    assert!(kept.starts_with(GAP_MARKER), "{kept}");
    let tail = model.tokenizer().decode(&ids[n - 10..], false).unwrap();
    assert!(kept.ends_with(&tail), "{kept} / {tail}");
}

/// A selector that breaks the contract is reported, not trusted.
fn invalid_selections_are_refused(device: &Device) {
    struct Unsorted;
    impl TokenSelector for Unsorted {
        fn name(&self) -> &str {
            "unsorted"
        }
        fn select(&self, probe: &Probe, _budget: usize) -> gemfilter_core::Result<Selection> {
            Ok(Selection {
                positions: vec![3, 1],
                scores: vec![0.0; probe.num_positions()],
            })
        }
    }
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let err = select_tokens(
        model.decoder(),
        &ids,
        1,
        4,
        &Unsorted,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not strictly ascending"), "{err}");
}

/// Bad parameters are errors naming the value, never panics.
fn bad_parameters_are_errors(device: &Device) {
    let model = load("llama-gqa", device);
    let ids = reference("llama-gqa").prompt_ids;
    let selector = GemFilterSelector::default();
    let decoder = model.decoder();
    let config = GenerationConfig::greedy(4, Vec::new());
    let gem = |layer, top_k| Method::GemFilter {
        filter_layer: layer,
        top_k,
        selector: &selector,
    };

    let err = generate(decoder, &ids, gem(1, 0), &config).unwrap_err();
    assert_eq!(err, CoreError::ZeroTopK);
    let err = generate(decoder, &ids, gem(4, 8), &config).unwrap_err();
    assert_eq!(
        err,
        CoreError::FilterLayerOutOfRange {
            layer: 4,
            num_layers: 4
        }
    );
    assert!(err.to_string().contains("valid: 0..=3"), "{err}");
    let err = generate(decoder, &[], Method::Full, &config).unwrap_err();
    assert_eq!(err, CoreError::EmptyPrompt);
    let long = vec![5u32; 513];
    let err = generate(decoder, &long, gem(1, 8), &config).unwrap_err();
    assert_eq!(
        err,
        CoreError::PromptTooLong {
            needed: 513,
            max: 512
        }
    );
    let err = generate(decoder, &[1, 320], Method::Full, &config).unwrap_err();
    assert_eq!(
        err,
        CoreError::TokenOutOfVocabulary {
            id: 320,
            vocab_size: 320
        }
    );
    let bad_sampling = GenerationConfig {
        sampling: Sampling::TopP {
            temperature: 0.0,
            top_p: 0.9,
            seed: 1,
        },
        ..config.clone()
    };
    let err = generate(decoder, &ids, Method::Full, &bad_sampling).unwrap_err();
    assert!(err.to_string().contains("temperature"), "{err}");
}

/// The opt-in selectors run through the real pipeline: one query summed is the paper's rule,
/// voting layers come from one pass and may not exceed the filter layer, spans fill the budget,
/// and a selection made beforehand answers exactly as GemFilter does.
fn composed_selectors_run_through_the_pipeline(device: &Device) {
    let model = load("llama-gqa", device);
    let reference = reference("llama-gqa");
    let ids = reference.prompt_ids;
    let gem = reference.gemfilter;
    let decoder = model.decoder();
    let paper = select_tokens(
        decoder,
        &ids,
        gem.filter_layer,
        gem.top_k,
        &GemFilterSelector::default(),
        &RunOptions::default(),
    )
    .unwrap();

    let one_query = QuestionWindowSelector::new(1, HeadNormalization::Sum);
    let same = select_tokens(
        decoder,
        &ids,
        gem.filter_layer,
        gem.top_k,
        &one_query,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(same.positions, paper.positions);
    assert_eq!(same.positions, gem.positions);

    for norm in [
        HeadNormalization::Sum,
        HeadNormalization::Softmax,
        HeadNormalization::MaxOverHeads,
    ] {
        let window = QuestionWindowSelector::new(8, norm);
        let selection = select_tokens(
            decoder,
            &ids,
            gem.filter_layer,
            gem.top_k,
            &window,
            &RunOptions::default(),
        )
        .unwrap();
        assert_eq!(selection.positions.len(), gem.top_k);
    }

    // Voting over layers 0..=r from one pass equals scoring each layer's probe separately.
    let layers: Vec<usize> = (0..=gem.filter_layer).collect();
    let vote = LayerVoteSelector::new(
        layers.clone(),
        VoteRule::RankSum,
        GemFilterSelector::default(),
    );
    let voted = select_tokens(
        decoder,
        &ids,
        gem.filter_layer,
        gem.top_k,
        &vote,
        &RunOptions::default(),
    )
    .unwrap();
    let separate: Vec<_> = layers
        .iter()
        .map(|&l| decoder.probe(&ids, l, 1, &RunOptions::default()).unwrap())
        .collect();
    let expected = vote.select_layers(&separate, gem.top_k).unwrap();
    assert_eq!(voted.positions, expected.positions);
    let error = max_abs_diff(&voted.scores, &expected.scores);
    assert!(error < 1e-3, "vote scores differ by {error}");
    let too_high = LayerVoteSelector::new(
        vec![gem.filter_layer + 1],
        VoteRule::RankSum,
        GemFilterSelector::default(),
    );
    let refused = select_tokens(
        decoder,
        &ids,
        gem.filter_layer,
        gem.top_k,
        &too_high,
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(refused, CoreError::InvalidSelector { .. }),
        "{refused:?}"
    );
    assert!(
        refused.to_string().contains("above the filter layer"),
        "{refused}"
    );

    // Spans of radius 2 around the best positions fill the budget exactly.
    let spans = SpanSelector::new(GemFilterSelector::default(), SpanRule::Radius(2));
    let spanned = select_tokens(
        decoder,
        &ids,
        gem.filter_layer,
        gem.top_k,
        &spans,
        &RunOptions::default(),
    )
    .unwrap();
    assert_eq!(spanned.positions.len(), gem.top_k);
    assert_eq!(spanned.scores, paper.scores);

    // A preselected answer is the GemFilter answer.
    let config = GenerationConfig::greedy(6, Vec::new());
    let method = Method::GemFilter {
        filter_layer: gem.filter_layer,
        top_k: gem.top_k,
        selector: &GemFilterSelector::default(),
    };
    let direct = generate(decoder, &ids, method, &config).unwrap();
    let again = generate(decoder, &ids, Method::Preselected(&paper), &config).unwrap();
    assert_eq!(direct.tokens, again.tokens);
    assert_eq!(again.selection.unwrap().positions, paper.positions);
}

on_every_backend!(
    stopped_pass_resumes_to_the_same_logits,
    chunked_prefill_matches_one_chunk,
    chunked_selection_pass_matches_one_pass,
    composed_selectors_run_through_the_pipeline,
    blocked_attention_matches_unblocked,
    cached_decoding_matches_recomputation,
    early_exit_probe_matches_observed_layer,
    budget_above_prompt_keeps_everything,
    stops_at_eos_or_budget,
    sampling_is_seeded,
    custom_selector_runs_through_the_pipeline,
    invalid_selections_are_refused,
    bad_parameters_are_errors,
);
