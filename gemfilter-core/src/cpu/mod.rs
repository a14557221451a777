//! Kernels for CPU devices (flex, ndarray): code that reads and writes host memory directly where
//! a sequence of small tensor operations would cost more than the arithmetic.

pub mod attention;
pub(crate) mod host_kv;

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

/// `e^x` for `x ≤ 0` (softmax arguments), relative error about 1e-7: `2^n · p(r)` with Cephes'
/// `expf` polynomial on the reduced argument. Branch-free and conversion-free (the integer `n` is
/// read from the float's bits), so loops over it vectorise.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer in the low bits.
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    // Cody–Waite reduction: r = x − n·ln 2 in two steps.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2)
        * r
        + 0.166_666_65)
        * r
        + 0.5)
        * (r * r)
        + r
        + 1.0;
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// `x · sigmoid(x)` from [`exp_nonpositive`] (`e^−|x|` never overflows): branch-free, so loops
/// over it vectorise.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let numerator = if x >= 0.0 { x } else { x * e };
    numerator / (1.0 + e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_on_softmax_arguments() {
        for i in 0..1740 {
            let x = -(i as f32) * 0.05;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "{x}: {got} vs {want}");
        }
        // Below −87 the result is clamped to e^−87 ≈ 1.6e−38: nothing next to a softmax's 1.
        assert!(exp_nonpositive(-200.0) < 2e-38);
    }

    #[test]
    fn silu_matches_its_definition() {
        for i in -4000..4000 {
            let x = i as f32 * 0.01;
            let want = (x as f64) / (1.0 + (-(x as f64)).exp());
            let got = silu(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{x}: {got} vs {want}"
            );
        }
        assert!(
            silu(-200.0).abs() < 1e-30,
            "far below zero: (almost) nothing"
        );
        assert_eq!(silu(200.0), 200.0);
    }
}
