//! A per-section wall-clock profile of forward passes (`gemfilter bench --profile`).
//!
//! When [`RunOptions::profile`](crate::RunOptions::profile) holds a [`Profile`], every layer times
//! its sections (norms, each projection, rotary embedding, attention, activation, residual adds)
//! and the decoder its embedding lookup and LM head; the device is synchronised at the end of each
//! section, so GPU times are real too (at the cost of the overlap the profile removes). Without a
//! profile nothing is timed or synchronised.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use burn::tensor::Device;

/// Accumulated time and call count per named section.
#[derive(Debug, Default)]
pub struct Profile {
    sections: Mutex<BTreeMap<&'static str, (Duration, u64)>>,
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` as section `name`, synchronising `device` before the clock stops.
    pub fn time<T>(&self, name: &'static str, device: &Device, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        let _ = device.sync();
        self.record(name, started.elapsed());
        out
    }

    /// Adds `elapsed` to section `name`.
    pub fn record(&self, name: &'static str, elapsed: Duration) {
        let mut sections = self.sections.lock().unwrap_or_else(|e| e.into_inner());
        let entry = sections.entry(name).or_default();
        entry.0 += elapsed;
        entry.1 += 1;
    }

    /// Every section with its total time and call count, longest first.
    pub fn sections(&self) -> Vec<(&'static str, Duration, u64)> {
        let sections = self.sections.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = sections.iter().map(|(&k, &(d, n))| (k, d, n)).collect();
        all.sort_by_key(|&(_, time, _)| std::cmp::Reverse(time));
        all
    }

    /// Forgets everything recorded.
    pub fn clear(&self) {
        self.sections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Times `f` as section `name` when `profile` is set; otherwise just runs it.
pub fn timed<T>(
    profile: Option<&Profile>,
    name: &'static str,
    device: &Device,
    f: impl FnOnce() -> T,
) -> T {
    match profile {
        Some(profile) => profile.time(name, device, f),
        None => f(),
    }
}
