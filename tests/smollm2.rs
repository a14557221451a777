//! Parity on the real model: SmolLM2-135M-Instruct (Q4_1 GGUF, loaded dequantised with
//! `--weights dense`; the packed path is `tests/quantized.rs`) against transformers loading the
//! same file in f32 (`scripts/reference/make_smollm2_reference.py`): tokenizer ids, top-20
//! last-position logits within 1e-3, 16 identical greedy tokens per prompt, identical GemFilter
//! kept positions at two (filter layer, k) settings on a ~2K-token needle prompt.

use gemfilter_core::{
    GemFilterSelector, GenerationConfig, LayerObserver, Method, Probe, RunOptions, TokenSelector,
    generate,
};
use gemfilter_tests::{
    Device, fixture_dir, last_logits, load_dense, on_every_backend, smollm2_path,
};
use serde::Deserialize;

const LOGIT_TOLERANCE: f32 = 1e-3;

#[derive(Deserialize)]
struct Reference {
    prompts: Vec<PromptReference>,
    needle: NeedleReference,
}

#[derive(Deserialize)]
struct PromptReference {
    text: String,
    chat: bool,
    ids: Vec<u32>,
    top20_ids: Vec<usize>,
    top20_logits: Vec<f32>,
    greedy: Vec<u32>,
}

#[derive(Deserialize)]
struct NeedleReference {
    file: String,
    ids: Vec<u32>,
    selections: Vec<SelectionReference>,
}

#[derive(Deserialize)]
struct SelectionReference {
    filter_layer: usize,
    top_k: usize,
    positions: Vec<usize>,
}

fn reference() -> Reference {
    let path = fixture_dir("smollm2").join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn prompts_match_transformers(device: &Device) {
    let model = load_dense(smollm2_path(), device);
    let reference = reference();
    for p in &reference.prompts {
        let ids = model.prompt_ids(&p.text, p.chat).unwrap();
        assert_eq!(ids, p.ids, "prompt ids of {:?}", p.text);
        let logits = last_logits(&model, &ids);
        let error = p
            .top20_ids
            .iter()
            .zip(&p.top20_logits)
            .map(|(&id, &want)| (logits[id] - want).abs())
            .fold(0.0f32, f32::max);
        println!(
            "{:?} on {device:?}: max |top-20 logit error| = {error:.3e}",
            p.text
        );
        assert!(
            error <= LOGIT_TOLERANCE,
            "{:?}: top-20 logits differ by {error}",
            p.text
        );
        let best = gemfilter_core::generate::argmax(&logits);
        assert_eq!(best, p.top20_ids[0], "{:?}: top-1 token", p.text);

        let config = GenerationConfig::greedy(p.greedy.len(), Vec::new());
        let out = generate(model.decoder(), &ids, Method::Full, &config).unwrap();
        assert_eq!(out.tokens, p.greedy, "{:?}: greedy tokens", p.text);
    }
}

/// Both reference selections from one probe pass that observes the two filter layers.
fn needle_selection_matches_transformers(device: &Device) {
    struct Layers(Vec<usize>, Vec<Probe>);
    impl LayerObserver for Layers {
        fn wants(&self, layer: usize) -> bool {
            self.0.contains(&layer)
        }
        fn observe(&mut self, probe: Probe) {
            self.1.push(probe);
        }
    }
    let model = load_dense(smollm2_path(), device);
    let reference = reference();
    let text =
        std::fs::read_to_string(fixture_dir("smollm2").join(&reference.needle.file)).unwrap();
    let ids = model.tokenizer().encode(&text, false).unwrap();
    assert_eq!(ids, reference.needle.ids, "needle prompt ids");
    let layers: Vec<usize> = reference
        .needle
        .selections
        .iter()
        .map(|s| s.filter_layer)
        .collect();
    let mut observer = Layers(layers.clone(), Vec::new());
    let last = *layers.iter().max().unwrap();
    model
        .decoder()
        .observe(&ids, last, 1, &mut observer, &RunOptions::default())
        .unwrap();
    let selector = GemFilterSelector::default();
    for expected in &reference.needle.selections {
        let probe = observer
            .1
            .iter()
            .find(|p| p.layer == expected.filter_layer)
            .unwrap();
        let selection = selector.select(probe, expected.top_k).unwrap();
        assert_eq!(
            selection.positions, expected.positions,
            "kept positions at layer {} k {}",
            expected.filter_layer, expected.top_k
        );
    }
}

on_every_backend!(
    prompts_match_transformers,
    needle_selection_matches_transformers
);
