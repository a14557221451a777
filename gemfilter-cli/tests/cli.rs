//! The `gemfilter` binary end to end on the tiny fixtures: JSON and human output, and the
//! one-line error with exit code 2 for every bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn gemfilter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemfilter"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Asserts exit code 2 and a single `error: …` line containing `needle`.
/// The command succeeded; its stderr otherwise.
fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_user_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generate_json_matches_reference_selection() {
    let model = fixture("llama-gqa");
    let r = reference("llama-gqa");
    let prompt = r["prompt"].as_str().unwrap();
    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--filter-layer",
        "2",
        "--top-k",
        "24",
        "--max-new-tokens",
        "5",
        "--json",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON line: {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["method"], "gemfilter");
    assert_eq!(json["backend"], "flex");
    assert_eq!(
        json["input_tokens"],
        r["prompt_ids"].as_array().unwrap().len()
    );
    assert_eq!(json["kept_tokens"], 24);
    assert_eq!(json["filter_layer"], 2);
    assert_eq!(json["top_k"], 24);
    assert_eq!(json["selected_positions"], r["gemfilter"]["positions"]);
    assert!(json["answer"].is_string());
    let tokens = json["answer_tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 5, "{tokens:?}");
    for phase in ["select", "prefill", "decode"] {
        assert!(json["timings_ms"][phase].as_f64().unwrap() >= 0.0);
    }
    assert!(json["model"].as_str().unwrap().ends_with("llama-gqa"));
}

#[test]
fn generate_full_json() {
    let model = fixture("llama-tied");
    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "The green lamp is quiet.",
        "--full",
        "--max-new-tokens",
        "3",
        "--json",
        "--backend",
        "ndarray",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["method"], "full");
    assert_eq!(json["backend"], "ndarray");
    assert_eq!(json["kept_tokens"], json["input_tokens"]);
    assert!(json["selected_positions"].is_null());
    assert!(json["filter_layer"].is_null());
}

#[test]
fn generate_human_output_shows_kept_text() {
    let model = fixture("llama-gqa");
    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Remember the secret number 4721. The river runs under the old stone bridge. What is the number?",
        "--top-k",
        "8",
        "--max-new-tokens",
        "4",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("method:  gemfilter, filter layer 2, top-k 8:"),
        "{stdout}"
    );
    assert!(stdout.contains("→ 8 tokens"), "{stdout}");
    assert!(stdout.contains("timings: select"), "{stdout}");
    assert!(
        stdout.contains("kept text ([...] marks dropped text):"),
        "{stdout}"
    );
    assert!(stdout.contains("[...]"), "{stdout}");
}

#[test]
fn chat_prompt_uses_template() {
    let model = fixture("llama-tied");
    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "Where is the lamp?",
        "--chat",
        "--top-k",
        "1000",
        "--max-new-tokens",
        "2",
        "--json",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = json["kept_text"].as_str().unwrap();
    assert!(
        kept.starts_with("<|im_start|>system\nYou are a helpful assistant.<|im_end|>"),
        "{kept}"
    );
    assert!(kept.ends_with("<|im_start|>assistant\n"), "{kept}");
}

#[test]
fn inspect_reports_architecture_and_filter_layer() {
    let out = gemfilter(&[
        "inspect",
        "--model",
        fixture("llama3-rope").to_str().unwrap(),
    ]);
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("architecture:   llama"), "{stdout}");
    assert!(
        stdout.contains("4 heads, 1 KV heads (4 per group), head_dim 16"),
        "{stdout}"
    );
    assert!(
        stdout.contains("llama3 (factor 8, low 1, high 4, original context 32)"),
        "{stdout}"
    );
    assert!(stdout.contains("filter layer:   2 (fallback"), "{stdout}");
}

#[test]
fn missing_model_folder() {
    let out = gemfilter(&["generate", "--model", "/no/such/model", "--prompt", "hi"]);
    assert_user_error(
        &out,
        "model (a Hugging Face folder or a .gguf file) not found: /no/such/model",
    );
}

#[test]
fn corrupt_weights() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("llama-gqa")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{}",
    )
    .unwrap();
    let out = gemfilter(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    assert_user_error(&out, "corrupt weights file");
}

#[test]
fn zero_top_k() {
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt",
        "hi",
        "--top-k",
        "0",
    ]);
    assert_user_error(&out, "--top-k must be at least 1 (got 0)");
}

#[test]
fn filter_layer_out_of_range() {
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt",
        "hi",
        "--filter-layer",
        "4",
    ]);
    assert_user_error(
        &out,
        "--filter-layer 4 is out of range: the model has 4 layers (valid: 0..=3)",
    );
}

#[test]
fn empty_prompt() {
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt",
        "   ",
    ]);
    assert_user_error(&out, "the prompt is empty");
}

#[test]
fn missing_prompt_file() {
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt-file",
        "/no/such/prompt.txt",
    ]);
    assert_user_error(&out, "cannot read prompt file /no/such/prompt.txt");
}

#[test]
fn prompt_longer_than_the_model_allows() {
    let long = "bridge ".repeat(600);
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt",
        &long,
    ]);
    assert_user_error(
        &out,
        "but the model accepts at most 512 (max_position_embeddings)",
    );
}

#[test]
fn backend_not_compiled_in() {
    let out = gemfilter(&[
        "generate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--prompt",
        "hi",
        "--backend",
        "cuda",
    ]);
    assert_user_error(
        &out,
        "backend `cuda` is not compiled into this binary; rebuild with",
    );
}

#[test]
fn chat_without_template() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("llama-gqa")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "tokenizer_config.json" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let out = gemfilter(&[
        "generate",
        "--model",
        dir.path().to_str().unwrap(),
        "--prompt",
        "hi",
        "--chat",
    ]);
    assert_user_error(&out, "has no chat template");
}

#[test]
fn usage_errors_exit_2() {
    let out = gemfilter(&["generate", "--model", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prompt"));
}

#[test]
fn needle_grid_writes_report_and_heatmap() {
    let out_dir = tempfile::tempdir().unwrap();
    let prompts = out_dir.path().join("prompts");
    let out = gemfilter(&[
        "needle",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "150,300",
        "--depths",
        "0,0.5,1",
        "--methods",
        "full,gemfilter",
        "--top-k",
        "16",
        "--max-new-tokens",
        "3",
        "--no-chat",
        "--output",
        out_dir.path().to_str().unwrap(),
        "--save-prompts",
        prompts.to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("needle.json")).unwrap())
            .unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 3 * 2);
    for cell in cells {
        let recall = &cell["needle_recall"];
        match cell["method"].as_str().unwrap() {
            "full" => assert!(recall.is_null()),
            "gemfilter" => assert!((0.0..=1.0).contains(&recall.as_f64().unwrap())),
            other => panic!("unexpected method {other}"),
        }
        assert!(cell["input_tokens"].as_u64().unwrap() >= 100);
        assert!(cell["ttft_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["summary"].as_array().unwrap().len(), 4);
    let svg = std::fs::read_to_string(out_dir.path().join("needle.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("needle recall") && svg.contains("answer correct")
    );
    assert!(prompts.join("needle-300-0.50.txt").is_file());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("gemfilter") && stdout.contains("accuracy"),
        "{stdout}"
    );

    // `report` rebuilds the table and the heatmap from the JSON alone.
    let again = out_dir.path().join("again");
    let json = out_dir.path().join("needle.json");
    let out = gemfilter(&[
        "report",
        json.to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    assert_success(&out);
    let md = std::fs::read_to_string(again.join("needle.md")).unwrap();
    let rows = md
        .lines()
        .filter(|l| l.starts_with("| full |") || l.starts_with("| gemfilter |"))
        .count();
    assert_eq!(rows, 4, "{md}");
    assert!(md.contains("| full | 150 | – |"), "{md}");
    assert!(again.join("needle.svg").is_file());
    let out = gemfilter(&["report", "/no/such/needle.json"]);
    assert_user_error(&out, "cannot read /no/such/needle.json");
}

#[test]
fn needle_recall_is_one_when_everything_is_kept() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = gemfilter(&[
        "needle",
        "--model",
        fixture("llama-tied").to_str().unwrap(),
        "--lengths",
        "120",
        "--depths",
        "0.5",
        "--methods",
        "gemfilter",
        "--top-k",
        "10000",
        "--max-new-tokens",
        "2",
        "--no-chat",
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("needle.json")).unwrap())
            .unwrap();
    assert_eq!(report["cells"][0]["needle_recall"].as_f64(), Some(1.0));
}

#[test]
fn calibrate_writes_a_per_layer_table() {
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("calibration.json");
    let out = gemfilter(&[
        "calibrate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--source",
        "needle",
        "--haystack",
        "generated",
        "--lengths",
        "200",
        "--depths",
        "0.2,0.8",
        "--top-k",
        "24",
        "--no-chat",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let calibration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let per_layer = calibration["per_layer"].as_array().unwrap();
    assert_eq!(per_layer.len(), 4);
    let recommended = calibration["recommended_layer"].as_u64().unwrap();
    let best = calibration["best_layer"].as_u64().unwrap();
    assert!(recommended <= best);
    let recall = |l: u64| per_layer[l as usize]["mean_recall"].as_f64().unwrap();
    assert!(recall(recommended) >= recall(best) - 0.05);
    assert!(
        per_layer
            .iter()
            .all(|l| (0.0..=1.0).contains(&l["mean_recall"].as_f64().unwrap()))
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("recommended filter layer:"), "{stdout}");
}

#[test]
fn bench_reports_ratios() {
    let out = gemfilter(&[
        "bench",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "200,400",
        "--top-k",
        "32",
        "--decode-tokens",
        "2",
        "--prefill-chunk",
        "64",
        "--selection-chunk",
        "100",
        "--matmul-peak",
        "--json",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["method"], "full");
    assert_eq!(rows[0]["ttft_vs_full"].as_f64(), Some(1.0));
    assert!(rows[0]["select_gflops"].is_null());
    assert_eq!(rows[1]["method"], "gemfilter-k32");
    assert!(rows[1]["ttft_vs_full"].as_f64().unwrap() > 0.0);
    assert!(rows[1]["select_gflops"].as_f64().unwrap() > 0.0);
    assert!(
        rows.iter()
            .all(|r| r["prefill_gflops"].as_f64().unwrap() > 0.0)
    );
    assert!(json["matmul_peak_gflops"].as_f64().unwrap() > 0.0);
    // Per length, the model's three projection shapes (llama-gqa: hidden 64, intermediate 160).
    let projections = json["projection_gflops"].as_array().unwrap();
    assert_eq!(projections.len(), 2 * 3);
    assert!(
        projections[0]["shape"]
            .as_str()
            .unwrap()
            .ends_with("x64x64")
    );
    assert!(
        projections
            .iter()
            .all(|p| p["gflops"].as_f64().unwrap() > 0.0)
    );
    // The packed kernels on the same shapes: per format, a prompt's rows and one decode row.
    let packed = json["packed_projection_rates"].as_array().unwrap();
    assert_eq!(packed.len(), 2 * 3 * 3 * 2);
    assert!(packed.iter().all(|p| p["value"].as_f64().unwrap() > 0.0));
    assert!(
        packed
            .iter()
            .any(|p| p["format"] == "q4_0" && p["unit"] == "GB/s")
    );
    assert_eq!(json["prefill_chunk"], 64);
    assert_eq!(json["selection_chunk"], 100);
}

#[test]
fn demo_runs_on_any_model() {
    let out = gemfilter(&[
        "demo",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--tokens",
        "250",
        "--top-k",
        "32",
        "--no-chat",
    ]);
    assert_success(&out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("GemFilter (filter layer 2, keep 32 of"),
        "{stdout}"
    );
    assert!(stdout.contains("Full attention over all"), "{stdout}");
    assert!(stdout.contains("time to first token"), "{stdout}");
}

#[test]
fn needle_rejects_bad_grids() {
    let model = fixture("llama-gqa");
    let out = gemfilter(&[
        "needle",
        "--model",
        model.to_str().unwrap(),
        "--depths",
        "1.5",
    ]);
    assert_user_error(&out, "--depths must lie in [0, 1] (got 1.5)");
    let out = gemfilter(&[
        "needle",
        "--model",
        model.to_str().unwrap(),
        "--lengths",
        "0",
    ]);
    assert_user_error(&out, "--lengths must list positive token counts");
    let out = gemfilter(&[
        "needle",
        "--model",
        model.to_str().unwrap(),
        "--lengths",
        "9000",
    ]);
    assert_user_error(&out, "--lengths 9000 exceeds the model's 512 positions");
    let out = gemfilter(&[
        "needle",
        "--model",
        model.to_str().unwrap(),
        "--haystack-file",
        "/no/such/haystack.txt",
    ]);
    assert_user_error(&out, "cannot read haystack file /no/such/haystack.txt");
}

#[test]
fn needle_compares_selectors_from_one_pass() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = gemfilter(&[
        "needle",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "200",
        "--depths",
        "0.3,0.7",
        "--methods",
        "gemfilter",
        "--selector",
        "gemfilter",
        "--selector",
        "window=8,norm=softmax,spans=sentence",
        "--selector",
        "vote=0+1+2,spans=radius:3",
        "--top-k",
        "24",
        "--filter-layer",
        "2",
        "--max-new-tokens",
        "2",
        "--no-chat",
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("needle.json")).unwrap())
            .unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 3);
    let selectors: Vec<Option<&str>> = cells.iter().map(|c| c["selector"].as_str()).collect();
    assert_eq!(
        &selectors[..3],
        &[
            None,
            Some("window=8,norm=softmax,spans=sentence"),
            Some("vote=0+1+2,spans=radius:3")
        ]
    );
    for cell in cells {
        assert!((0.0..=1.0).contains(&cell["needle_recall"].as_f64().unwrap()));
        assert!(cell["select_ms"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["summary"].as_array().unwrap().len(), 3);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("gemfilter[window=8,norm=softmax,spans=sentence]"),
        "{stdout}"
    );
    // The report command reads the selectors back.
    let md = gemfilter(&[
        "report",
        out_dir.path().join("needle.json").to_str().unwrap(),
    ]);
    assert_success(&md);
    let table = std::fs::read_to_string(out_dir.path().join("needle.md")).unwrap();
    assert!(
        table.contains("gemfilter[vote=0+1+2,spans=radius:3]"),
        "{table}"
    );
}

#[test]
fn selector_mistakes_are_one_error_line() {
    let out_dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let model = model.to_str().unwrap();
    let output = out_dir.path().to_str().unwrap();
    let needle = |extra: &[&'static str]| {
        let mut args = vec!["needle", "--lengths", "120", "--no-chat", "--output"];
        args.push(output);
        args.extend(["--model", model]);
        args.extend(extra);
        args
    };
    for (args, expected) in [
        (
            needle(&["--selector", "window=0"]),
            "window must be at least 1",
        ),
        (
            needle(&["--selector", "vote=1+3", "--filter-layer", "2"]),
            "above the filter layer 2",
        ),
        (
            vec!["calibrate", "--model", model, "--selector", "vote=0+1"],
            "cannot be calibrated per layer",
        ),
        (
            vec![
                "generate",
                "--model",
                model,
                "--prompt",
                "hi",
                "--selector",
                "spans=page",
            ],
            "spans `page`",
        ),
    ] {
        let out = gemfilter(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn calibrate_compares_selectors() {
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("calibration.json");
    let out = gemfilter(&[
        "calibrate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--source",
        "needle",
        "--lengths",
        "200",
        "--depths",
        "0.5",
        "--top-k",
        "24",
        "--selector",
        "window=4,spans=sentence",
        "--selector",
        "gemfilter",
        "--no-chat",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let calibration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(calibration["selector"], "window=4,spans=sentence");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("window=4,spans=sentence: recommended layer"),
        "{stdout}"
    );
    assert!(stdout.contains("gemfilter: recommended layer"), "{stdout}");
}

#[test]
fn needle_and_bench_compare_all_four_methods() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = gemfilter(&[
        "needle",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "150,300",
        "--depths",
        "0.5",
        "--methods",
        "full,gemfilter,snapkv,h2o",
        "--top-k",
        "64",
        "--max-new-tokens",
        "2",
        "--no-chat",
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("needle.json")).unwrap())
            .unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2 * 4);
    for cell in cells {
        let recall = &cell["needle_recall"];
        match cell["method"].as_str().unwrap() {
            "full" => assert!(recall.is_null()),
            "gemfilter" | "snapkv" | "h2o" => {
                assert!((0.0..=1.0).contains(&recall.as_f64().unwrap()), "{cell}")
            }
            other => panic!("unexpected method {other}"),
        }
    }
    assert_eq!(report["kv_heads"], "query");
    let md = std::fs::read_to_string(out_dir.path().join("needle.md")).unwrap();
    assert!(
        md.contains("| snapkv | 300 |") && md.contains("| h2o | 150 |"),
        "{md}"
    );
    assert!(md.contains("GemFilter against snapkv"), "{md}");
    let svg = std::fs::read_to_string(out_dir.path().join("needle.svg")).unwrap();
    assert!(svg.contains("snapkv: answer correct") && svg.contains("h2o: needle recall"));
    let scaling = std::fs::read_to_string(out_dir.path().join("needle-scaling.svg")).unwrap();
    assert!(scaling.contains("time to first token") && scaling.contains("peak resident memory"));

    let bench_dir = out_dir.path().join("bench");
    let out = gemfilter(&[
        "bench",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "200",
        "--methods",
        "full,gemfilter,snapkv,h2o",
        "--top-k",
        "64",
        "--kv-heads",
        "kv",
        "--decode-tokens",
        "2",
        "--json",
        "--output",
        bench_dir.to_str().unwrap(),
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["rows"].as_array().unwrap();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["full", "gemfilter-k64", "snapkv-k64", "h2o-k64"]);
    // Same budget and KV heads: GemFilter's and the baselines' caches are the same size, each
    // smaller than full attention's.
    let cache = |i: usize| rows[i]["kv_cache_mib"].as_f64().unwrap();
    assert!(cache(1) < cache(0));
    assert!((cache(2) - cache(1)).abs() < 1e-9 && (cache(3) - cache(1)).abs() < 1e-9);
    assert!(bench_dir.join("bench.md").is_file() && bench_dir.join("bench.svg").is_file());
}

#[test]
fn generate_with_a_baseline() {
    let model = fixture("llama-gqa");
    let prompt = "The green lamp is quiet. ".repeat(30);
    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--baseline",
        "snapkv",
        "--top-k",
        "48",
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert_success(&out);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["method"], "snapkv");
    assert_eq!(json["kv_cache_entries"], 48);
    assert_eq!(json["kv_heads"], 4);
    assert!(json["selected_positions"].is_null());

    let out = gemfilter(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--baseline",
        "h2o",
        "--top-k",
        "20",
    ]);
    assert_user_error(&out, "the budget (20) must exceed the recent window (32)");
}

/// Runs `gemfilter ruler` on the fixture: every method at one budget, two tasks that fit its
/// 512 positions, two samples each.
fn ruler(output: &std::path::Path, seed: &str) -> std::process::Output {
    gemfilter(&[
        "ruler",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--tasks",
        "niah_single_1,fwe",
        "--lengths",
        "512",
        "--samples",
        "2",
        "--budgets",
        "64",
        "--methods",
        "full,gemfilter,snapkv,h2o",
        "--selector",
        "gemfilter",
        "--selector",
        "window=8,spans=sentence",
        "--filter-layer",
        "2,3",
        "--seed",
        seed,
        "--no-chat",
        "--output",
        output.to_str().unwrap(),
    ])
}

/// Propagation (both early-KV choices) and a staged selector run through the suite: each variant
/// reports its decode KV cache, every early position costs more cache than the kept ones, and
/// stages at or above the filter layer are refused before any work.
#[test]
fn ruler_runs_propagation_and_staged_selectors() {
    let out_dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-gqa");
    let run = |selector: &str| {
        gemfilter(&[
            "ruler",
            "--model",
            model.to_str().unwrap(),
            "--tasks",
            "niah_single_1",
            "--lengths",
            "512",
            "--samples",
            "1",
            "--budgets",
            "64",
            "--methods",
            "gemfilter,propagate,propagate-kept",
            "--selector",
            "gemfilter",
            "--selector",
            selector,
            "--filter-layer",
            "2",
            "--no-chat",
            "--output",
            out_dir.path().to_str().unwrap(),
        ])
    };
    let out = run("stages=3:128");
    assert_user_error(&out, "prunes at layer 3, not below the filter layer 2");
    let out = run("window=8,stages=1:128");
    assert_success(&out);
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(out_dir.path().join("results.jsonl"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(records.len(), 6, "3 methods × 2 selectors");
    let kv = |method: &str, selector: &str| {
        records
            .iter()
            .find(|r| r["variant"]["method"] == method && r["variant"]["selector"] == selector)
            .unwrap_or_else(|| panic!("{method} {selector}"))["kv_cache_mib"]
            .as_f64()
            .unwrap()
    };
    for selector in ["gemfilter", "window=8,stages=1:128"] {
        assert!(kv("propagate", selector) > kv("propagate_kept", selector));
        assert_eq!(kv("propagate_kept", selector), kv("gemfilter", selector));
    }
    for record in &records {
        let recall = record["recall"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall), "{record}");
    }
    let md = std::fs::read_to_string(out_dir.path().join("ruler.md")).unwrap();
    for row in [
        "| propagate@64/L2 |",
        "| propagate-kept@64/L2 |",
        "| gemfilter[window=8,stages=1:128]@64/L2 |",
        "| propagate-kept[window=8,stages=1:128]@64/L2 |",
        "KV MiB",
    ] {
        assert!(md.contains(row), "{row}: {md}");
    }
}

#[test]
fn ruler_runs_every_method_and_resumes() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = ruler(out_dir.path(), "42");
    assert_success(&out);
    let results = out_dir.path().join("results.jsonl");
    let lines = |path: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let records = lines(&results);
    // A header, then 2 tasks × 2 samples × 7 variants (full, SnapKV, H2O, 2 selectors × 2 layers).
    assert!(records[0]["run"]["seed"] == 42, "{}", records[0]);
    assert_eq!(records.len(), 1 + 2 * 2 * 7);
    for record in &records[1..] {
        let score = record["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&score), "{record}");
        assert!(record["prompt_tokens"].as_u64().unwrap() + 50 <= 512);
        assert!(record["ttft_ms"].as_f64().unwrap() > 0.0);
        let method = record["variant"]["method"].as_str().unwrap();
        match (method, record["task"].as_str().unwrap()) {
            ("full", _) | (_, "fwe") => assert!(record["recall"].is_null(), "{record}"),
            _ => assert!((0.0..=1.0).contains(&record["recall"].as_f64().unwrap())),
        }
    }
    // One prefill served full, SnapKV and H2O: they report the same prefill time.
    let prefill = |method: &str| {
        records[1..]
            .iter()
            .find(|r| r["variant"]["method"] == method)
            .unwrap()["prefill_ms"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(prefill("full"), prefill("snapkv"));
    assert_eq!(prefill("full"), prefill("h2o"));
    let md = std::fs::read_to_string(out_dir.path().join("ruler.md")).unwrap();
    for row in [
        "| full |",
        "| gemfilter@64/L2 |",
        "| gemfilter[window=8,spans=sentence]@64/L2 |",
        "| gemfilter@64/L3 |",
        "| snapkv@64 |",
        "| h2o@64 |",
    ] {
        assert!(md.contains(row), "{row}: {md}");
    }
    assert!(
        md.contains("niah_single_1") && md.contains("÷ full"),
        "{md}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.path().join("ruler.json")).unwrap())
            .unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 7);
    assert!(
        std::fs::read_to_string(out_dir.path().join("ruler.svg"))
            .unwrap()
            .starts_with("<svg")
    );

    // Again: nothing is recomputed.
    let out = ruler(out_dir.path(), "42");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("28 results (0 new"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(lines(&results).len(), records.len());

    // An interrupted write (half a line) is dropped and that result alone runs again.
    let text = std::fs::read_to_string(&results).unwrap();
    let cut = text.trim_end().rfind('\n').unwrap() + 1 + 40;
    std::fs::write(&results, &text[..cut]).unwrap();
    let out = ruler(out_dir.path(), "42");
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("28 results (1 new"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(lines(&results).len(), records.len());

    // Another seed would mix samples: refused, naming the file.
    let out = ruler(out_dir.path(), "7");
    assert_user_error(&out, "cannot resume");

    // Reports alone from the file, no model: every method found, only the first sample here.
    std::fs::remove_file(out_dir.path().join("ruler.md")).unwrap();
    let out = gemfilter(&[
        "ruler",
        "--report-only",
        "--samples",
        "1",
        "--output",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_success(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("14 results;"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let md = std::fs::read_to_string(out_dir.path().join("ruler.md")).unwrap();
    let rows: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| method"))
        .collect();
    assert_eq!(rows.len(), 7, "{md}");
    assert!(rows[0].starts_with("| full |"), "{md}");
    assert!(
        rows[6].starts_with("| h2o@64 |") && rows[6].ends_with(" 1 |"),
        "{md}"
    );
    let out = gemfilter(&[
        "ruler",
        "--report-only",
        "--output",
        out_dir.path().join("nothing-here").to_str().unwrap(),
    ]);
    assert_user_error(&out, "does not exist");
}

#[test]
fn calibrate_on_ruler_needles() {
    let out_dir = tempfile::tempdir().unwrap();
    let path = out_dir.path().join("calibration.json");
    let out = gemfilter(&[
        "calibrate",
        "--model",
        fixture("llama-gqa").to_str().unwrap(),
        "--lengths",
        "512",
        "--tasks",
        "niah_single_2,niah_single_1",
        "--samples",
        "2",
        "--top-k",
        "64",
        "--selector",
        "gemfilter",
        "--selector",
        "window=8,spans=sentence",
        "--no-chat",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_success(&out);
    let calibration: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(calibration["per_layer"].as_array().unwrap().len(), 4);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("recommended selector:"), "{stdout}");
    assert!(
        stdout.contains("RULER niah_single_2, niah_single_1"),
        "{stdout}"
    );
    // Tuning on the held-out set, or on tasks without an answer span, is refused.
    for (task, expected) in [("qa_2", "held out"), ("cwe", "no evidence span")] {
        let out = gemfilter(&[
            "calibrate",
            "--model",
            fixture("llama-gqa").to_str().unwrap(),
            "--tasks",
            task,
            "--no-chat",
        ]);
        assert_user_error(&out, expected);
    }
}
