//! Parity with Hugging Face transformers on the committed tiny LLaMA checkpoints: tokenizer ids,
//! last-position logits (≤ 1e-4), GemFilter kept positions (identical), 8 greedy tokens of full
//! and GemFilter generation (identical), chat-template rendering (identical).

use gemfilter_core::{
    GemFilterSelector, GenerationConfig, Method, RunOptions, generate, select_tokens,
};
use gemfilter_models::{ChatMessage, Model};
use gemfilter_tests::{
    Device, fixture_dir, last_logits, max_abs_diff, on_every_backend, reference,
};

/// Logits must match transformers' f32 eager forward within this absolute error.
const LOGIT_TOLERANCE: f32 = 1e-4;
/// Pooled GemFilter scores, relative to their largest magnitude.
const SCORE_RELATIVE_TOLERANCE: f32 = 1e-4;

fn check_fixture(name: &str, device: &Device) {
    let reference = reference(name);
    let model = Model::load(fixture_dir(name), device).expect("fixture loads");
    let backend = format!("{device:?}");

    // Tokenizer: the same ids as transformers' AutoTokenizer, BOS as the post-processor says.
    let ids = model.prompt_ids(&reference.prompt, false).unwrap();
    assert_eq!(
        ids, reference.prompt_ids,
        "{name}: prompt ids differ from transformers"
    );
    assert_eq!(
        model.info().eos_token_ids,
        reference.eos_token_ids,
        "{name}: EOS ids"
    );

    // Logits of the last position.
    let logits = last_logits(&model, &ids);
    let logit_error = max_abs_diff(&logits, &reference.last_logits);
    println!("{name} on {backend}: max |logit error| = {logit_error:.3e}");
    assert!(
        logit_error <= LOGIT_TOLERANCE,
        "{name}: logits differ from transformers by {logit_error}"
    );

    // GemFilter selection against the independent Python implementation of the reference.
    let gem = &reference.gemfilter;
    let selector = GemFilterSelector::default();
    let selection = select_tokens(
        model.decoder(),
        &ids,
        gem.filter_layer,
        gem.top_k,
        &selector,
        &RunOptions::default(),
    )
    .unwrap();
    let scale = gem.pooled_scores.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let score_error = max_abs_diff(&selection.scores, &gem.pooled_scores) / scale;
    println!(
        "{name} on {backend}: max relative pooled-score error = {score_error:.3e} (selection margin {:.3e})",
        gem.boundary_margin
    );
    assert!(
        score_error <= SCORE_RELATIVE_TOLERANCE,
        "{name}: pooled scores differ by {score_error}"
    );
    assert_eq!(
        selection.positions, gem.positions,
        "{name}: kept positions differ"
    );

    // Greedy decoding, full and GemFilter, EOS not special (as the reference recorded them).
    let config = GenerationConfig::greedy(reference.greedy_full.len(), Vec::new());
    let full = generate(model.decoder(), &ids, Method::Full, &config).unwrap();
    assert_eq!(
        full.tokens, reference.greedy_full,
        "{name}: full greedy tokens"
    );
    let method = Method::GemFilter {
        filter_layer: gem.filter_layer,
        top_k: gem.top_k,
        selector: &selector,
    };
    let config = GenerationConfig::greedy(reference.greedy_gemfilter.len(), Vec::new());
    let gemfilter = generate(model.decoder(), &ids, method, &config).unwrap();
    assert_eq!(gemfilter.kept_tokens, gem.top_k.min(ids.len()));
    assert_eq!(
        gemfilter.selection.as_ref().unwrap().positions,
        gem.positions,
        "{name}: pipeline selection"
    );
    assert_eq!(
        gemfilter.tokens, reference.greedy_gemfilter,
        "{name}: GemFilter greedy tokens"
    );

    // Chat template rendered by minijinja exactly as transformers' jinja2 renders it.
    let template = model.chat_template().expect("fixture has a chat template");
    let messages: Vec<ChatMessage> = reference
        .chat
        .messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect();
    let text = template.render(&messages, true).unwrap();
    assert_eq!(text, reference.chat.text, "{name}: chat template rendering");
    let chat_ids = model.tokenizer().encode(&text, false).unwrap();
    assert_eq!(chat_ids, reference.chat.ids, "{name}: chat ids");
}

fn llama_gqa(device: &Device) {
    check_fixture("llama-gqa", device);
}

fn llama_tied(device: &Device) {
    check_fixture("llama-tied", device);
}

fn llama3_rope(device: &Device) {
    check_fixture("llama3-rope", device);
}

fn llama_headdim(device: &Device) {
    check_fixture("llama-headdim", device);
}

fn mistral_window(device: &Device) {
    check_fixture("mistral-window", device);
}

fn phi3_longrope(device: &Device) {
    check_fixture("phi3-longrope", device);
}

/// The window matters: without it the logits move by what transformers measured.
fn mistral_window_changes_the_output(device: &Device) {
    let reference = reference("mistral-window");
    let expected_change = reference.logits_change_without_window.expect("recorded");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir("mistral-window")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["sliding_window"] = serde_json::Value::Null;
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = Model::load(dir.path(), device).unwrap();
    assert_eq!(model.decoder().config().sliding_window, None);
    let unwindowed = last_logits(&model, &reference.prompt_ids);
    let change = max_abs_diff(&unwindowed, &reference.last_logits);
    assert!(
        (change - expected_change).abs() < 1e-3,
        "change {change} vs transformers' {expected_change}"
    );
    let windowed = Model::load(fixture_dir("mistral-window"), device).unwrap();
    assert_eq!(windowed.decoder().config().sliding_window, Some(24));
}

/// A prompt within the original context stays on the short factors.
fn phi3_short_prompt_uses_short_factors(device: &Device) {
    let reference = reference("phi3-longrope");
    let short = reference.short_prompt.expect("recorded");
    let model = Model::load(fixture_dir("phi3-longrope"), device).unwrap();
    assert_eq!(model.prompt_ids(&short.prompt, false).unwrap(), short.ids);
    let error = max_abs_diff(&last_logits(&model, &short.ids), &short.last_logits);
    println!("phi3-longrope short prompt on {device:?}: max |logit error| = {error:.3e}");
    assert!(
        error <= LOGIT_TOLERANCE,
        "short prompt logits differ by {error}"
    );
}

on_every_backend!(
    llama_gqa,
    llama_tied,
    llama3_rope,
    llama_headdim,
    mistral_window,
    phi3_longrope,
    mistral_window_changes_the_output,
    phi3_short_prompt_uses_short_factors,
);
