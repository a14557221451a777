//! Peak resident memory of this process (Linux: `VmHWM`, reset through `clear_refs`).

/// Resets the peak-RSS watermark so the next reading covers only what follows. Returns false
/// where the platform cannot (the reading then covers the whole process life).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size in bytes since the last reset, when the platform reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
