//! # gemfilter-eval
//!
//! Evaluation of GemFilter and its baselines on real text: RULER's tasks built from the data
//! RULER ships on PyPI ([`ruler`], [`data`]), the needle-in-a-haystack grid on real prose or a
//! generated haystack ([`needle`]), and filter-layer calibration ([`calibration`]). The
//! `gemfilter ruler`, `needle` and `calibrate` commands are thin shells over this crate.

pub mod calibration;
pub mod data;
pub mod error;
pub mod needle;
pub mod ruler;

pub use error::{EvalError, Result};
