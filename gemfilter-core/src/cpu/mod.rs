//! Kernels for CPU devices (flex, ndarray): code that reads and writes host memory directly where
//! a sequence of small tensor operations would cost more than the arithmetic.

pub mod attention;

use burn::tensor::Device;

/// Whether `device` keeps tensors in host memory (flex, ndarray), where this crate's CPU kernels
/// run (packed matrix products, attention) instead of the backend's operations.
pub fn runs_on_host(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)] // Burn deprecates ndarray in favour of flex; users still ask for it.
    if *device == Device::ndarray() {
        return true;
    }
    let _ = device;
    false
}
