//! `--backend` / `--device`: which Burn device runs the model.

use clap::ValueEnum;
use gemfilter_models::burn::tensor::Device;

/// Backends the CLI knows, whether or not they were compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Pure-Rust CPU backend (Burn's default CPU backend).
    Flex,
    /// ndarray CPU backend (deprecated by Burn in favour of flex).
    Ndarray,
    /// wgpu: Vulkan, Metal, DirectX or WebGPU, whichever the platform offers.
    Wgpu,
    /// wgpu forced onto Vulkan (SPIR-V kernels).
    Vulkan,
    /// wgpu forced onto Metal (MSL kernels).
    Metal,
    /// NVIDIA CUDA.
    Cuda,
}

impl Backend {
    /// Name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Metal => "metal",
            Backend::Cuda => "cuda",
        }
    }

    /// The device of this backend with index `index` (GPU backends) or an error naming the
    /// cargo feature that enables it.
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
    pub fn device(self, index: usize) -> Result<Device, String> {
        let missing = || {
            format!(
                "backend `{0}` is not compiled into this binary; rebuild with `cargo build --release -p gemfilter-cli --features {0}`",
                self.name()
            )
        };
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            // Burn deprecates ndarray in favour of flex; kept on request.
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(wgpu_kind(index))),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Ok(Device::vulkan(wgpu_kind(index))),
            #[cfg(feature = "metal")]
            Backend::Metal => Ok(Device::metal(wgpu_kind(index))),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(index)),
            #[allow(unreachable_patterns)]
            _ => Err(missing()),
        }
    }
}

#[cfg(feature = "wgpu")]
fn wgpu_kind(index: usize) -> gemfilter_models::burn::tensor::DeviceKind {
    use gemfilter_models::burn::tensor::DeviceKind;
    if index == 0 {
        DeviceKind::default()
    } else {
        DeviceKind::DiscreteGpu(index)
    }
}

/// The default backend of this build: the first CPU backend compiled in.
pub fn default_backend() -> Backend {
    if cfg!(feature = "flex") {
        Backend::Flex
    } else if cfg!(feature = "ndarray") {
        Backend::Ndarray
    } else if cfg!(feature = "cuda") {
        Backend::Cuda
    } else {
        Backend::Wgpu
    }
}
