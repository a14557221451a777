//! Loading errors: every broken input gets an error naming the file, field or tensor, never a
//! panic. Each test breaks a copy of a valid fixture in one way.

use std::path::{Path, PathBuf};

use gemfilter_models::{Model, ModelError};
use gemfilter_tests::{Device, fixture_dir};
use safetensors::tensor::{SafeTensors, TensorView};

/// A temporary copy of a fixture folder.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(name);
    std::fs::create_dir(&target).unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), target.join(entry.file_name())).unwrap();
    }
    (dir, target)
}

fn load_err(folder: &Path) -> ModelError {
    Model::load(folder, &Device::flex()).expect_err("loading must fail")
}

fn edit_config(folder: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = folder.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Rewrites `model.safetensors` through `edit(name, dtype, shape, bytes)`; returning `None`
/// drops the tensor.
fn rewrite_weights(
    folder: &Path,
    edit: impl Fn(
        &str,
        safetensors::Dtype,
        Vec<usize>,
        Vec<u8>,
    ) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let path = folder.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    let mut kept = Vec::new();
    for (name, view) in tensors.tensors() {
        if let Some(t) = edit(
            &name,
            view.dtype(),
            view.shape().to_vec(),
            view.data().to_vec(),
        ) {
            kept.push((name, t));
        }
    }
    let views: Vec<(String, TensorView)> = kept
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, out).unwrap();
}

#[test]
fn missing_folder() {
    let err = load_err(Path::new("/nonexistent/llama"));
    assert!(matches!(err, ModelError::NotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "model (a Hugging Face folder or a .gguf file) not found: /nonexistent/llama"
    );
}

#[test]
fn missing_config() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::remove_file(folder.join("config.json")).unwrap();
    let err = load_err(&folder).to_string();
    assert!(
        err.starts_with("config.json not found: ") && err.ends_with("config.json"),
        "{err}"
    );
}

#[test]
fn malformed_config() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::write(folder.join("config.json"), "{ \"model_type\": \"llama\", ").unwrap();
    let err = load_err(&folder).to_string();
    assert!(err.contains("config.json is not valid JSON"), "{err}");
}

#[test]
fn unsupported_model_type() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    edit_config(&folder, |c| c["model_type"] = "gpt2".into());
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("unsupported architecture: model_type `gpt2`"),
        "{err}"
    );
    assert!(err.contains("supported: llama"), "{err}");
}

#[test]
fn missing_required_field() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    edit_config(&folder, |c| {
        c.as_object_mut().unwrap().remove("hidden_size");
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("field `hidden_size` is required but missing"),
        "{err}"
    );
}

#[test]
fn unknown_rope_type_is_refused() {
    let (_tmp, folder) = copy_fixture("llama3-rope");
    edit_config(&folder, |c| c["rope_scaling"]["rope_type"] = "yarn".into());
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("field `rope_scaling.rope_type` is `yarn`, which is not supported"),
        "{err}"
    );
}

#[test]
fn unknown_phi3_rope_type_is_refused() {
    let (_tmp, folder) = copy_fixture("phi3-longrope");
    edit_config(&folder, |c| c["rope_scaling"]["type"] = "dynamic".into());
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("field `rope_scaling.rope_type` is `dynamic`, which is not supported")
            && err.contains("longrope (su)"),
        "{err}"
    );
}

#[test]
fn longrope_factor_count_is_checked() {
    let (_tmp, folder) = copy_fixture("phi3-longrope");
    edit_config(&folder, |c| {
        c["rope_scaling"]["short_factor"] = serde_json::json!([1.0, 2.0])
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains(
            "field `rope_scaling.short_factor` has 2 entries, expected rotary dimension / 2 = 6"
        ),
        "{err}"
    );
}

#[test]
fn legacy_su_rope_type_is_longrope() {
    let (_tmp, folder) = copy_fixture("phi3-longrope");
    edit_config(&folder, |c| c["rope_scaling"]["type"] = "su".into());
    let model = Model::load(&folder, &Device::flex()).unwrap();
    assert!(matches!(
        model.decoder().config().rope.scaling,
        gemfilter_core::RopeScaling::LongRope { .. }
    ));
}

#[test]
fn longrope_is_refused_for_llama() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    edit_config(
        &folder,
        |c| c["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
    );
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("field `rope_scaling.rope_type` is `longrope`, which is not supported"),
        "{err}"
    );
}

#[test]
fn mistral_window_defaults_like_transformers() {
    // No `sliding_window` key: MistralConfig's default of 4096; explicit null: no window.
    let (_tmp, folder) = copy_fixture("mistral-window");
    edit_config(&folder, |c| {
        c.as_object_mut().unwrap().remove("sliding_window");
    });
    let model = Model::load(&folder, &Device::flex()).unwrap();
    assert_eq!(model.decoder().config().sliding_window, Some(4096));
    edit_config(&folder, |c| c["sliding_window"] = serde_json::Value::Null);
    let model = Model::load(&folder, &Device::flex()).unwrap();
    assert_eq!(model.decoder().config().sliding_window, None);
}

#[test]
fn missing_fused_tensor_is_named() {
    let (_tmp, folder) = copy_fixture("phi3-longrope");
    rewrite_weights(&folder, |name, dtype, shape, data| {
        (name != "model.layers.2.self_attn.qkv_proj.weight").then_some((dtype, shape, data))
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("`model.layers.2.self_attn.qkv_proj.weight`"),
        "{err}"
    );
}

#[test]
fn inconsistent_heads() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    edit_config(&folder, |c| c["num_key_value_heads"] = 3.into());
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("must be a multiple of `num_key_value_heads` (3)"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::remove_file(folder.join("tokenizer.json")).unwrap();
    let err = load_err(&folder).to_string();
    assert!(err.starts_with("tokenizer.json not found"), "{err}");
}

#[test]
fn corrupt_tokenizer() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::write(folder.join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = load_err(&folder).to_string();
    assert!(
        err.starts_with("tokenizer error (") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn missing_weights() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::remove_file(folder.join("model.safetensors")).unwrap();
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("weights (model.safetensors or model.safetensors.index.json) not found"),
        "{err}"
    );
}

#[test]
fn garbage_weights() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::write(
        folder.join("model.safetensors"),
        b"not a safetensors file at all",
    )
    .unwrap();
    let err = load_err(&folder);
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

#[test]
fn truncated_weights() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    let path = folder.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_err(&folder);
    assert!(matches!(err, ModelError::CorruptWeights { .. }), "{err:?}");
    assert!(err.to_string().starts_with("corrupt weights file"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    rewrite_weights(&folder, |name, dtype, shape, data| {
        (name != "model.layers.1.mlp.up_proj.weight").then_some((dtype, shape, data))
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("missing tensors in") && err.contains("`model.layers.1.mlp.up_proj.weight`"),
        "{err}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    rewrite_weights(&folder, |name, dtype, shape, data| {
        if name == "model.layers.0.self_attn.k_proj.weight" {
            // [32, 64] → [64, 32]: same bytes, wrong layout.
            Some((dtype, vec![shape[1], shape[0]], data))
        } else {
            Some((dtype, shape, data))
        }
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("tensor `model.layers.0.self_attn.k_proj.weight`")
            && err.contains("has shape [64, 32], expected [32, 64]"),
        "{err}"
    );
}

#[test]
fn integer_tensor_is_refused() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    rewrite_weights(&folder, |name, dtype, shape, data| {
        if name == "model.norm.weight" {
            Some((safetensors::Dtype::I32, shape, data))
        } else {
            Some((dtype, shape, data))
        }
    });
    let err = load_err(&folder).to_string();
    assert!(
        err.contains("tensor `model.norm.weight`") && err.contains("unsupported element type I32"),
        "{err}"
    );
}

#[test]
fn missing_shard_is_named() {
    let (_tmp, folder) = copy_fixture("llama-headdim");
    std::fs::remove_file(folder.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load_err(&folder).to_string();
    assert!(
        err.starts_with("weight shard listed in model.safetensors.index.json not found")
            && err.ends_with("model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn chat_without_template() {
    let (_tmp, folder) = copy_fixture("llama-gqa");
    std::fs::remove_file(folder.join("tokenizer_config.json")).unwrap();
    let model = Model::load(&folder, &Device::flex()).unwrap();
    let err = model.prompt_ids("hello", true).unwrap_err().to_string();
    assert!(err.contains("has no chat template"), "{err}");
}
