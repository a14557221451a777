//! Reuse of prompt-prefix work across requests (the server's follow-up questions), streaming and
//! cancellation: a reused selection equals a cold one, a reused full-attention prefill answers
//! as a cold one, streamed text adds up to the answer, and a raised cancel flag stops the work.

use std::sync::Arc;
use std::sync::mpsc;

use gemfilter_core::{
    CancelFlag, CoreError, FinishReason, GemFilterSelector, GenerationConfig, LayerVoteSelector,
    Method, PrefixCache, RunOptions, Selection, TokenSelector, VoteRule, generate,
    generate_streaming, select_tokens, select_tokens_reusing,
};
use gemfilter_models::{
    Engine, EngineConfig, EngineEvent, Model, ModelError, Request, SubmitError,
};
use gemfilter_tests::{Device, fixture_dir, on_every_backend, reference};

fn load(name: &str, device: &Device) -> Model {
    Model::load(fixture_dir(name), device).expect("fixture loads")
}

/// `n` token ids drawn from a fixed generator over a 320-token vocabulary.
fn ids(seed: u64, n: usize) -> Vec<u32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            3 + ((state >> 33) % 300) as u32
        })
        .collect()
}

/// Scores and positions of two selections agree: same positions, scores within `tolerance` of
/// the largest score magnitude.
fn assert_same_selection(cold: &Selection, warm: &Selection, what: &str) {
    assert_eq!(
        cold.positions, warm.positions,
        "{what}: kept positions differ"
    );
    let scale = cold.scores.iter().fold(1e-6f32, |m, s| m.max(s.abs()));
    let error = cold
        .scores
        .iter()
        .zip(&warm.scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("{what}: max score difference {error:.3e} of scale {scale:.3e}");
    assert!(
        error <= 1e-4 * scale,
        "{what}: scores differ by {error} (scale {scale})"
    );
}

/// A follow-up prompt sharing a document prefix selects the same tokens from the cached early
/// layers as a cold pass over the whole prompt, for one-layer and multi-layer selectors, with
/// and without a chunked pass; the cache reports the reuse.
fn reused_selection_matches_a_cold_pass(device: &Device) {
    for name in ["llama-gqa", "mistral-window", "phi3-longrope"] {
        let model = load(name, device);
        let decoder = model.decoder();
        let layer = reference(name).gemfilter.filter_layer;
        let document = ids(7, 120);
        let first: Vec<u32> = document.iter().copied().chain(ids(8, 12)).collect();
        let follow_up: Vec<u32> = document.iter().copied().chain(ids(9, 17)).collect();
        let vote = LayerVoteSelector::new(
            vec![layer - 1, layer],
            VoteRule::NormalizedSum,
            GemFilterSelector::default(),
        );
        let selectors: [(&str, &dyn TokenSelector); 2] =
            [("paper", &GemFilterSelector::default()), ("vote", &vote)];
        for (label, selector) in selectors {
            for chunk in [None, Some(40)] {
                let options = RunOptions {
                    selection_chunk: chunk,
                    ..RunOptions::default()
                };
                let what = format!("{name} {label} chunk {chunk:?}");
                let mut prefixes = PrefixCache::new(64 << 20);
                let (_, reused) = select_tokens_reusing(
                    decoder,
                    &first,
                    layer,
                    24,
                    selector,
                    &options,
                    &mut prefixes,
                )
                .unwrap();
                assert_eq!(reused, 0, "{what}: nothing to reuse at first");
                let (warm, reused) = select_tokens_reusing(
                    decoder,
                    &follow_up,
                    layer,
                    24,
                    selector,
                    &options,
                    &mut prefixes,
                )
                .unwrap();
                assert_eq!(reused, document.len(), "{what}: the document is reused");
                let cold =
                    select_tokens(decoder, &follow_up, layer, 24, selector, &options).unwrap();
                assert_same_selection(&cold, &warm, &what);
                // The same prompt again reuses all but the probe's query window.
                let (again, reused) = select_tokens_reusing(
                    decoder,
                    &follow_up,
                    layer,
                    24,
                    selector,
                    &options,
                    &mut prefixes,
                )
                .unwrap();
                assert_eq!(reused, follow_up.len() - selector.query_window());
                assert_same_selection(&cold, &again, &format!("{what} (repeat)"));
                let stats = prefixes.stats();
                assert_eq!((stats.hits, stats.misses), (2, 1), "{what}: {stats:?}");
                // The follow-up extended nothing: both prompts are kept, the repeat replaced its own.
                assert_eq!(stats.entries, 2, "{what}: {stats:?}");
            }
        }
    }
}

/// Longrope rotates a prompt past the original context (96 positions in the fixture) with other
/// frequencies, so a short cached prompt is not reused for a long one; the selection is a cold
/// pass's.
fn longrope_prefix_across_the_original_context_is_not_reused(device: &Device) {
    let model = load("phi3-longrope", device);
    let decoder = model.decoder();
    let selector = GemFilterSelector::default();
    let options = RunOptions::default();
    let short = ids(5, 60);
    let long: Vec<u32> = short.iter().copied().chain(ids(6, 60)).collect();
    let mut prefixes = PrefixCache::new(64 << 20);
    select_tokens_reusing(decoder, &short, 2, 24, &selector, &options, &mut prefixes).unwrap();
    let (warm, reused) =
        select_tokens_reusing(decoder, &long, 2, 24, &selector, &options, &mut prefixes).unwrap();
    assert_eq!(
        reused, 0,
        "a short-context prefix is not reused past the original context"
    );
    let cold = select_tokens(decoder, &long, 2, 24, &selector, &options).unwrap();
    assert_same_selection(&cold, &warm, "phi3-longrope across the original context");
}

/// Full attention continuing from a cached prompt prefix generates what a cold run does; a
/// GemFilter generation through the cache selects and answers as a cold one.
fn reused_generation_matches_a_cold_run(device: &Device) {
    let model = load("llama-gqa", device);
    let decoder = model.decoder();
    let layer = reference("llama-gqa").gemfilter.filter_layer;
    let document = ids(11, 150);
    let config = GenerationConfig::greedy(8, Vec::new());
    let selector = GemFilterSelector::default();
    let gemfilter = Method::GemFilter {
        filter_layer: layer,
        top_k: 32,
        selector: &selector,
    };
    for method in [Method::Full, gemfilter] {
        let mut prefixes = PrefixCache::new(64 << 20);
        for (round, question) in [ids(12, 9), ids(13, 14), ids(13, 14)].iter().enumerate() {
            let prompt: Vec<u32> = document.iter().chain(question).copied().collect();
            let cold = generate(decoder, &prompt, method, &config).unwrap();
            let warm = generate_streaming(
                decoder,
                &prompt,
                method,
                &config,
                Some(&mut prefixes),
                &mut |_| gemfilter_core::TokenControl::Continue,
            )
            .unwrap();
            println!(
                "{method:?} round {round}: reused {} of {}",
                warm.reused_tokens,
                prompt.len()
            );
            if round == 0 {
                assert_eq!(warm.reused_tokens, 0);
            } else {
                assert!(warm.reused_tokens >= document.len(), "{method:?}: no reuse");
            }
            assert_eq!(cold.tokens, warm.tokens, "{method:?} round {round}");
            assert_eq!(
                cold.selection.map(|s| s.positions),
                warm.selection.map(|s| s.positions),
                "{method:?} round {round}"
            );
        }
    }
}

/// The cache never holds more than its byte bound, evicting the least recently used prompt.
fn prefix_cache_stays_within_its_bound(device: &Device) {
    let model = load("llama-gqa", device);
    let decoder = model.decoder();
    let selector = GemFilterSelector::default();
    let options = RunOptions::default();
    let mut probe = PrefixCache::new(usize::MAX);
    select_tokens_reusing(decoder, &ids(1, 100), 2, 8, &selector, &options, &mut probe).unwrap();
    let one = probe.bytes();
    assert!(one > 0);
    // Room for two prompts of 100 positions.
    let mut prefixes = PrefixCache::new(2 * one + one / 2);
    for seed in 1..=4 {
        select_tokens_reusing(
            decoder,
            &ids(seed, 100),
            2,
            8,
            &selector,
            &options,
            &mut prefixes,
        )
        .unwrap();
        assert!(prefixes.bytes() <= prefixes.max_bytes());
    }
    let stats = prefixes.stats();
    assert_eq!((stats.entries, stats.evictions), (2, 2), "{stats:?}");
    // The most recent prompt is still there; the first was evicted.
    let (_, reused) = select_tokens_reusing(
        decoder,
        &ids(4, 100),
        2,
        8,
        &selector,
        &options,
        &mut prefixes,
    )
    .unwrap();
    assert_eq!(reused, 99);
    let (_, reused) = select_tokens_reusing(
        decoder,
        &ids(1, 100),
        2,
        8,
        &selector,
        &options,
        &mut prefixes,
    )
    .unwrap();
    assert_eq!(reused, 0);
}

on_every_backend!(
    reused_selection_matches_a_cold_pass,
    longrope_prefix_across_the_original_context_is_not_reused,
    reused_generation_matches_a_cold_run,
    prefix_cache_stays_within_its_bound,
);

/// Streamed deltas add up to the answer text, stop sequences cut it, a raised flag cancels.
#[test]
fn streaming_stop_sequences_and_cancellation() {
    let model = load("llama-gqa", &Device::flex());
    let prompt = reference("llama-gqa").prompt_ids;
    let request = Request {
        max_new_tokens: 24,
        ignore_eos: true,
        ..Request::full()
    };
    let mut streamed = String::new();
    let answer = model
        .generate_streaming(&prompt, &request, None, &mut |delta| {
            streamed.push_str(&delta.text);
            gemfilter_core::TokenControl::Continue
        })
        .unwrap();
    assert_eq!(streamed, answer.text);
    assert_eq!(answer.generation.tokens.len(), 24);
    assert!(answer.text.chars().count() >= 4, "text: {:?}", answer.text);

    // A stop sequence taken from the middle of the answer ends it just before.
    let chars: Vec<char> = answer.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = answer.text.find(&stop).unwrap();
    let stopping = Request {
        stop: vec![stop.clone()],
        ..request.clone()
    };
    let mut streamed = String::new();
    let stopped = model
        .generate_streaming(&prompt, &stopping, None, &mut |delta| {
            streamed.push_str(&delta.text);
            gemfilter_core::TokenControl::Continue
        })
        .unwrap();
    assert_eq!(stopped.text, answer.text[..cut], "stop {stop:?}");
    assert_eq!(streamed, stopped.text);
    assert_eq!(stopped.generation.finish_reason, FinishReason::Stopped);

    // A flag raised before the run cancels it at the first layer.
    let cancel = CancelFlag::new();
    cancel.cancel();
    let cancelled = Request {
        run: RunOptions {
            cancel: Some(cancel),
            ..RunOptions::default()
        },
        ..request
    };
    match model.generate_ids(&prompt, &cancelled) {
        Err(ModelError::Core(CoreError::Cancelled)) => {}
        other => panic!("expected a cancellation, got {other:?}"),
    }
}

/// The engine answers requests from several threads in turn, reuses a shared document,
/// refuses work beyond its queue, and cancels a request whose receiver is gone.
#[test]
fn engine_serves_threads_queues_and_cancels() {
    let model = Arc::new(load("llama-gqa", &Device::flex()));
    let engine = Arc::new(Engine::start(
        model.clone(),
        EngineConfig {
            queue_capacity: 2,
            prefix_cache_bytes: 64 << 20,
        },
    ));
    let document = ids(21, 200);
    let request = Request {
        max_new_tokens: 6,
        ..Request::gemfilter(32)
    };
    // Four threads, one question each, retrying while the queue is full.
    let answers: Vec<_> = (0..4)
        .map(|t| {
            let (engine, request) = (engine.clone(), request.clone());
            let prompt: Vec<u32> = document.iter().copied().chain(ids(30 + t, 8)).collect();
            std::thread::spawn(move || {
                loop {
                    let (sender, events) = mpsc::channel();
                    match engine.submit(prompt.clone(), request.clone(), move |e| {
                        sender.send(e).is_ok()
                    }) {
                        Ok(_) => {}
                        Err(SubmitError::QueueFull { .. }) => {
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            continue;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    let mut text = String::new();
                    for event in events {
                        match event {
                            EngineEvent::Started { .. } => {}
                            EngineEvent::Delta(delta) => text.push_str(&delta.text),
                            EngineEvent::Done(answer) => {
                                let answer = answer.expect("answered");
                                assert_eq!(text, answer.text);
                                return answer.generation.reused_tokens;
                            }
                        }
                    }
                    panic!("no Done event");
                }
            })
        })
        .collect();
    let reused: Vec<usize> = answers.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        reused.iter().filter(|&&r| r >= document.len()).count() >= 3,
        "later questions reuse the document: {reused:?}"
    );

    // A request whose receiver is gone is cancelled, and says so in the counters.
    let before = engine.stats().cancelled;
    let (sender, events) = mpsc::channel::<EngineEvent>();
    drop(events);
    engine
        .submit(document.clone(), request.clone(), move |e| {
            sender.send(e).is_ok()
        })
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while engine.stats().cancelled == before {
        assert!(std::time::Instant::now() < deadline, "never cancelled");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let stats = engine.stats();
    println!("engine stats: {stats:?}");
    assert_eq!(stats.completed, 4);
    assert_eq!(stats.failed, 0);
}
