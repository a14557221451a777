//! `gemfilter bench`: time to first token, decode speed and peak memory of full attention,
//! GemFilter and the SnapKV / H2O baselines at several prompt lengths (a benchmark, not a test).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use std::time::Instant;

use gemfilter_core::Decoder;
use gemfilter_core::burn::tensor::{DType, Device, Distribution, Tensor};
use gemfilter_core::{GenerationConfig, Method, RunOptions, generate};
use gemfilter_eval::needle::{Haystack, Needle, SplitMix64, build_prompt};
use gemfilter_models::{
    Architecture, Model, SelectorSpec, WeightFormat, default_filter_layer, synthetic,
};
use serde::Serialize;

use super::needle::{KvHeads, Method as MethodName};
use super::{ComputeArgs, load_model_or_demo};
use crate::lines::{LinePanel, line_panels, series_by_label};
use crate::memory;

/// Arguments of `gemfilter bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model folder or .gguf file (default: the demo model, fetched if absent).
    #[arg(long, conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// Benchmark a published shape with random weights and random token ids instead of a model
    /// file (`llama-3.1-8b`, `smollm2-135m-32k`); with `--weights q8_0|q4_0|q4_1` the weights are
    /// random packed blocks.
    #[arg(long)]
    pub synthetic: Option<String>,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1000usize, 2000, 4000, 8000])]
    pub lengths: Vec<usize>,
    /// Methods to measure, comma-separated (`full,gemfilter,snapkv,h2o,propagate,propagate-kept`).
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [MethodName::Full, MethodName::Gemfilter])]
    pub methods: Vec<MethodName>,
    /// Budgets to measure, comma-separated: GemFilter's kept tokens, and the cache entries per
    /// layer and head of SnapKV and H2O.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024])]
    pub top_k: Vec<usize>,
    /// Heads sharing kept positions in SnapKV and H2O.
    #[arg(long, value_enum, default_value_t = KvHeads::Query)]
    pub kv_heads: KvHeads,
    /// Selector of GemFilter and propagation (`gemfilter` or a spec such as
    /// `window=32,spans=sentence,stages=4:2048`; see `gemfilter needle --help`).
    #[arg(long, default_value = "gemfilter")]
    pub selector: String,
    /// 0-based filter layer (default: calibrated, known or fallback).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    /// Tokens decoded after the first (for tokens/s).
    #[arg(long, default_value_t = 16)]
    pub decode_tokens: usize,
    /// Skip full attention (long prompts on slow machines).
    #[arg(long)]
    pub skip_full: bool,
    /// Use the blocked attention with explicit masks instead of the backend's fused op.
    #[arg(long)]
    pub no_fused_attention: bool,
    /// Also measure the device's matrix-product peak (GFLOP/s of square products in the compute
    /// dtype) and, per length, the model's own projection products, to compare the prefill's
    /// throughput with.
    #[arg(long)]
    pub matmul_peak: bool,
    /// Prefill in chunks of at most this many tokens through the KV cache (bounds activations).
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Run the selection pass in chunks of at most this many tokens (bounds activations, adds a
    /// temporary cache for the layers below the filter layer).
    #[arg(long)]
    pub selection_chunk: Option<usize>,
    #[command(flatten)]
    pub compute: ComputeArgs,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also profile one full prefill and the decode steps after it, per length: wall time per
    /// section (norms, projections, rotary, attention, KV-cache writes, activation, residual adds,
    /// embedding, LM head, and what is left: host transfers, sampling).
    #[arg(long)]
    pub profile: bool,
    /// Also write `bench.json`, `bench.md` (table) and `bench.svg` (time to first token, peak
    /// memory and KV cache size against prompt length, one line per method) into this folder.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Prompt tokens.
    pub tokens: usize,
    /// "full", "gemfilter-k<k>", "snapkv-k<budget>" or "h2o-k<budget>".
    pub method: String,
    /// Selection time (s).
    pub select_s: f64,
    /// GemFilter rows: the prompt fitted in k, so no selection pass ran.
    pub selection_skipped: bool,
    /// Prefill time (s).
    pub prefill_s: f64,
    /// Time to first token (s).
    pub ttft_s: f64,
    /// Decode speed after the first token.
    pub decode_tokens_per_s: f64,
    /// Arithmetic throughput of the selection pass (GFLOP/s; GemFilter rows).
    pub select_gflops: Option<f64>,
    /// Arithmetic throughput of the prefill (GFLOP/s; over the kept tokens for GemFilter).
    pub prefill_gflops: f64,
    /// Peak resident memory during the run (MiB).
    pub peak_rss_mib: Option<f64>,
    /// Key/value storage the decoding ran on (MiB): what the cache allocated for every layer,
    /// room for the decoded tokens included (f32 on CPU devices).
    pub kv_cache_mib: f64,
    /// Device memory the allocator holds after the run (MiB; GPU backends).
    pub device_reserved_mib: Option<f64>,
    /// TTFT relative to full attention at the same length.
    pub ttft_vs_full: Option<f64>,
    /// Peak memory relative to full attention at the same length.
    pub memory_vs_full: Option<f64>,
}

/// Runs the subcommand.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths must list positive token counts");
    }
    if args.top_k.contains(&0) {
        bail!("--top-k must be at least 1 (got 0)");
    }
    let compute = args.compute.resolve()?;
    let backend = compute.backend;
    let subject = match &args.synthetic {
        Some(name) => {
            let config = synthetic::shape(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown --synthetic shape `{name}` (known: {})",
                    synthetic::SHAPES.join(", ")
                )
            })?;
            let layer = default_filter_layer(Architecture::LLAMA, &config).layer;
            // `--weights q8_0|q4_0|q4_1`: random packed blocks; otherwise dense random weights.
            let decoder = match compute.weights {
                WeightFormat::Packed(format) => synthetic::random_packed_decoder(
                    config,
                    format,
                    compute.dtype,
                    0,
                    &compute.device,
                )?,
                _ => Decoder::random(config, &compute.device, compute.dtype)?,
            };
            Subject::Synthetic {
                name: format!("{name} ({} weights)", compute.weights),
                decoder: Box::new(decoder),
                layer,
            }
        }
        None => Subject::Model(Box::new(load_model_or_demo(
            args.model.as_deref(),
            &compute,
        )?)),
    };
    let run = RunOptions {
        fused_attention: !args.no_fused_attention,
        prefill_chunk: args.prefill_chunk,
        selection_chunk: args.selection_chunk,
        ..RunOptions::default()
    };
    let layer = args.filter_layer.unwrap_or(subject.default_layer());
    let max_positions = subject.decoder().config().max_position_embeddings;
    if let Some(&too_long) = args.lengths.iter().find(|&&l| l > max_positions) {
        bail!(
            "--lengths {too_long} exceeds the model's {max_positions} positions (max_position_embeddings)"
        );
    }
    let spec: SelectorSpec = args.selector.parse()?;
    // No EOS: every run decodes the same number of tokens.
    let config = GenerationConfig {
        run,
        ..GenerationConfig::greedy(args.decode_tokens + 1, Vec::new())
    };
    let matmul_peak = args.matmul_peak.then(|| {
        let gflops = matmul_peak_gflops(subject.decoder().device(), compute.dtype);
        if !args.json {
            println!(
                "matrix-product peak: {gflops:.1} GFLOP/s ({:?})",
                compute.dtype
            );
        }
        gflops
    });
    let mut rows: Vec<Row> = Vec::new();
    let mut projections: Vec<(String, f64)> = Vec::new();
    let mut packed_rates: Vec<PackedRate> = Vec::new();
    let mut profiles = Vec::new();
    for &length in &args.lengths {
        let prompt = subject.prompt(length)?;
        if args.profile {
            // On a rayon worker, as `generate` runs (see there).
            let profile = rayon::scope(|_| {
                profile_passes(subject.decoder(), &prompt, args.decode_tokens, &config.run)
            })?;
            if !args.json {
                print_profile(prompt.len(), &profile);
            }
            profiles.push(profile);
        }
        if args.matmul_peak {
            let measured = projection_gflops(
                subject.decoder().device(),
                compute.dtype,
                subject.decoder().config(),
                prompt.len(),
            );
            if !args.json {
                let line: Vec<String> = measured
                    .iter()
                    .map(|(shape, g)| format!("{shape} {g:.1}"))
                    .collect();
                println!("projection products (GFLOP/s): {}", line.join(", "));
            }
            projections.extend(measured);
            let quantized = packed_projection_rates(subject.decoder().config(), prompt.len());
            if !args.json {
                for rate in &quantized {
                    println!(
                        "  packed {}/{} {}: {:.1} {}",
                        rate.format, rate.kernel, rate.shape, rate.value, rate.unit
                    );
                }
            }
            packed_rates.extend(quantized);
        }
        let compressors: Vec<(String, Box<dyn gemfilter_core::KvCompressor>)> = args
            .methods
            .iter()
            .filter_map(|m| m.kv_method())
            .flat_map(|kv| {
                args.top_k.iter().map(move |&budget| {
                    (
                        format!("{}-k{budget}", kv.name()),
                        kv.compressor(budget, args.kv_heads.sharing()),
                    )
                })
            })
            .collect();
        let selector = match &subject {
            Subject::Model(model) => spec.build(model.tokenizer(), &prompt)?,
            Subject::Synthetic { .. } => spec.build_without_text()?,
        };
        let selector = selector.as_ref();
        let mut methods: Vec<(String, Method)> = Vec::new();
        if args.methods.contains(&MethodName::Full) && !args.skip_full {
            methods.push(("full".into(), Method::Full));
        }
        if args.methods.contains(&MethodName::Gemfilter) {
            for &top_k in &args.top_k {
                methods.push((
                    format!("gemfilter-k{top_k}"),
                    Method::GemFilter {
                        filter_layer: layer,
                        top_k,
                        selector,
                    },
                ));
            }
        }
        for method in [MethodName::Propagate, MethodName::PropagateKept] {
            if !args.methods.contains(&method) {
                continue;
            }
            for &top_k in &args.top_k {
                methods.push((
                    format!("{}-k{top_k}", method.name()),
                    Method::Propagate {
                        filter_layer: layer,
                        top_k,
                        selector,
                        early_kv: method.early_kv().expect("a propagation method"),
                    },
                ));
            }
        }
        for (name, compressor) in &compressors {
            methods.push((name.clone(), Method::KvCompressed(compressor.as_ref())));
        }
        let mut full: Option<(f64, Option<f64>)> = None;
        for (name, method) in methods {
            let device = subject.decoder().device().clone();
            device.memory_cleanup();
            memory::reset_peak();
            let out = generate(subject.decoder(), &prompt, method, &config)?;
            let peak = memory::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0));
            let reserved = device
                .memory_pool_usage()
                .map(|u| u.bytes_reserved as f64 / (1024.0 * 1024.0));
            let t = out.timings;
            let decoded = out.tokens.len().saturating_sub(1);
            let ttft = t.time_to_first_token().as_secs_f64();
            if name == "full" {
                full = Some((ttft, peak));
            }
            let model_config = subject.decoder().config();
            let ran_selection = out.selection.is_some() && !out.selection_skipped;
            let select_gflops = ran_selection.then(|| {
                // Layers 0..r-1 in full; at r the key projection of every position.
                let flops = layer as f64 * model_config.layer_flops(prompt.len(), 0)
                    + 2.0
                        * (prompt.len()
                            * model_config.hidden_size
                            * model_config.num_kv_heads
                            * model_config.head_dim) as f64;
                flops / t.select.as_secs_f64() / 1e9
            });
            let prefill_gflops =
                model_config.prefill_flops(out.kept_tokens) / t.prefill.as_secs_f64() / 1e9;
            // What the cache allocated (f32 on CPU devices, the compute dtype elsewhere),
            // room for the decoded tokens included.
            let kv_cache_mib = out.kv_cache_bytes as f64 / (1024.0 * 1024.0);
            let row = Row {
                tokens: prompt.len(),
                method: name,
                select_s: t.select.as_secs_f64(),
                selection_skipped: out.selection_skipped,
                prefill_s: t.prefill.as_secs_f64(),
                select_gflops,
                prefill_gflops,
                ttft_s: ttft,
                decode_tokens_per_s: if decoded > 0 {
                    decoded as f64 / t.decode.as_secs_f64()
                } else {
                    0.0
                },
                peak_rss_mib: peak,
                kv_cache_mib,
                device_reserved_mib: reserved,
                ttft_vs_full: full.map(|(f, _)| ttft / f),
                memory_vs_full: full.and_then(|(_, m)| Some(peak? / m?)),
            };
            if !args.json {
                print_row(&row, rows.is_empty());
            }
            rows.push(row);
        }
    }
    let object = serde_json::json!({
            "model": subject.name(),
            "dtype": format!("{:?}", compute.dtype),
            "backend": backend.name(),
            "filter_layer": layer,
            "kv_heads": args.kv_heads.sharing().label(),
            "fused_attention": !args.no_fused_attention,
            "prefill_chunk": args.prefill_chunk,
            "selection_chunk": args.selection_chunk,
            "matmul_peak_gflops": matmul_peak,
            "projection_gflops": projections
                .iter()
                .map(|(shape, g)| serde_json::json!({"shape": shape, "gflops": g}))
                .collect::<Vec<_>>(),
            "packed_projection_rates": packed_rates,
            "rows": rows,
            "profiles": profiles,
    });
    if args.json {
        println!("{}", serde_json::to_string(&object)?);
    }
    if let Some(folder) = &args.output {
        write_report(folder, &subject.name(), &object, &rows)?;
    }
    Ok(())
}

/// Writes the JSON, a markdown table and the line charts (one line per method and budget).
fn write_report(
    folder: &std::path::Path,
    model: &str,
    object: &serde_json::Value,
    rows: &[Row],
) -> Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    let json_path = folder.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(object)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let series = |value: &dyn Fn(&Row) -> Option<f64>| {
        series_by_label(rows, |r| r.method.clone(), |r| r.tokens, value)
    };
    let panels = [
        LinePanel {
            title: "time to first token".into(),
            y_desc: "seconds".into(),
            series: series(&|r| Some(r.ttft_s)),
        },
        LinePanel {
            title: "peak resident memory".into(),
            y_desc: "MiB".into(),
            series: series(&|r| r.peak_rss_mib),
        },
        LinePanel {
            title: "KV cache while decoding".into(),
            y_desc: "MiB".into(),
            series: series(&|r| Some(r.kv_cache_mib)),
        },
    ];
    let svg_path = folder.join("bench.svg");
    line_panels(&svg_path, &panels)?;
    let mut md = format!(
        "Benchmark of `{model}`.\n\n\
         | tokens | method | TTFT (s) | select (s) | prefill (s) | decode (tokens/s) | peak RSS (MiB) | KV cache (MiB) | TTFT / full | peak / full |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}"));
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {:.1} | {} | {} |\n",
            r.tokens,
            r.method,
            r.ttft_s,
            r.select_s,
            r.prefill_s,
            r.decode_tokens_per_s,
            r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            r.kv_cache_mib,
            ratio(r.ttft_vs_full),
            ratio(r.memory_vs_full),
        ));
    }
    let md_path = folder.join("bench.md");
    std::fs::write(&md_path, &md).with_context(|| format!("cannot write {}", md_path.display()))?;
    eprintln!(
        "written: {}, {}, {}",
        json_path.display(),
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

fn print_row(row: &Row, header: bool) {
    if header {
        println!(
            "{:>7} {:>16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "tokens",
            "method",
            "select s",
            "sel GF/s",
            "prefill s",
            "pre GF/s",
            "ttft s",
            "decode t/s",
            "peak MiB",
            "cache MiB",
            "ttft/full",
            "mem/full"
        );
    }
    let ratio = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    println!(
        "{:>7} {:>16} {:>9.2} {:>9} {:>9.2} {:>9.1} {:>9.2} {:>10.1} {:>9} {:>9.1} {:>9} {:>9}",
        row.tokens,
        row.method,
        row.select_s,
        row.select_gflops.map_or("-".into(), |g| format!("{g:.1}")),
        row.prefill_s,
        row.prefill_gflops,
        row.ttft_s,
        row.decode_tokens_per_s,
        row.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
        row.kv_cache_mib,
        ratio(row.ttft_vs_full),
        ratio(row.memory_vs_full)
    );
}

/// GFLOP/s of square matrix products in `dtype` on `device`: the best over sizes 512, 1024 and
/// 2048 (see [`matmul_gflops`]).
fn matmul_peak_gflops(device: &Device, dtype: DType) -> f64 {
    [512usize, 1024, 2048]
        .into_iter()
        .map(|size| matmul_gflops(device, dtype, size, size, size))
        .fold(0.0, f64::max)
}

/// GFLOP/s of one `[m, k] × [k, n]` product in `dtype` on `device`: the best of 5 timed runs
/// after a warm-up, each synchronised by reading a reduction of the product back.
fn matmul_gflops(device: &Device, dtype: DType, m: usize, k: usize, n: usize) -> f64 {
    let matrix = |rows, cols| {
        Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), device).cast(dtype)
    };
    let (a, b) = (matrix(m, k), matrix(k, n));
    let run = || {
        let product = a.clone().matmul(b.clone());
        let _ = product.sum().into_data();
    };
    run();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let started = Instant::now();
        run();
        let seconds = started.elapsed().as_secs_f64();
        best = best.max(2.0 * (m * k * n) as f64 / seconds / 1e9);
    }
    best
}

/// GFLOP/s of the model's own projection products at `tokens` rows: attention output
/// (`hidden × hidden`), MLP up (`hidden × intermediate`) and down (`intermediate × hidden`).
fn projection_gflops(
    device: &Device,
    dtype: DType,
    config: &gemfilter_core::DecoderConfig,
    tokens: usize,
) -> Vec<(String, f64)> {
    let (hidden, wide) = (config.hidden_size, config.intermediate_size);
    [(hidden, hidden), (hidden, wide), (wide, hidden)]
        .into_iter()
        .map(|(k, n)| {
            (
                format!("{tokens}x{k}x{n}"),
                matmul_gflops(device, dtype, tokens, k, n),
            )
        })
        .collect()
}

/// One measured rate of the host kernels' packed product.
#[derive(Debug, Clone, serde::Serialize)]
struct PackedRate {
    /// Block format of the weight (`q8_0`, `q4_0`, `q4_1`).
    format: String,
    /// Host kernel that ran it (`vnni`, `avx2`, `scalar`).
    kernel: &'static str,
    /// `rows x in x out`.
    shape: String,
    /// `GFLOP/s` for a prompt's rows, `GB/s` of packed weight for a single row (a decode step).
    unit: &'static str,
    value: f64,
}

/// The host kernels' packed products (`x · Wᵀ`, the weight in each block format) on the model's
/// projection shapes at `tokens` rows: GFLOP/s (2 per multiply-add, activation quantisation
/// included) and, for a single row (a decode step), GB/s of packed weight streamed. Best of 6.
fn packed_projection_rates(
    config: &gemfilter_core::DecoderConfig,
    tokens: usize,
) -> Vec<PackedRate> {
    use gemfilter_core::quant::{InterleavedMatrix, Kernel, PackedMatrix, QuantFormat};
    let (hidden, wide) = (config.hidden_size, config.intermediate_size);
    let mut rates = Vec::new();
    for format in QuantFormat::ALL {
        for (k, n) in [(hidden, hidden), (hidden, wide), (wide, hidden)] {
            let values: Vec<f32> = (0..n * k)
                .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
                .collect();
            let Ok(packed) = PackedMatrix::quantize(&values, n, k, format) else {
                continue;
            };
            let weight = InterleavedMatrix::from_packed(&packed);
            for rows in [tokens, 1] {
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i % 31) as f32 - 15.0) / 16.0)
                    .collect();
                let mut best = f64::INFINITY;
                for _ in 0..6 {
                    let started = Instant::now();
                    let _ = weight.matmul(&x, rows);
                    best = best.min(started.elapsed().as_secs_f64());
                }
                let (unit, value) = if rows == 1 {
                    ("GB/s", weight.byte_len() as f64 / best / 1e9)
                } else {
                    ("GFLOP/s", 2.0 * (rows * k * n) as f64 / best / 1e9)
                };
                rates.push(PackedRate {
                    format: format.to_string(),
                    kernel: Kernel::detect().name(),
                    shape: format!("{rows}x{k}x{n}"),
                    unit,
                    value,
                });
            }
        }
    }
    rates
}

/// Where the time of one full prefill and of the decode steps after it goes.
#[derive(Debug, Clone, serde::Serialize)]
struct PassProfile {
    tokens: usize,
    prefill_s: f64,
    decode_steps: usize,
    decode_s: f64,
    /// `(section, prefill seconds, decode seconds per step)`, longest prefill first.
    sections: Vec<(String, f64, f64)>,
}

/// Profiles a full prefill of `prompt` and `steps` greedy decode steps after it.
fn profile_passes(
    decoder: &Decoder,
    prompt: &[u32],
    steps: usize,
    run: &gemfilter_core::RunOptions,
) -> Result<PassProfile> {
    use gemfilter_core::{Profile, generate::argmax};
    use std::sync::Arc;
    let host = |t: Tensor<1>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 logits")
    };
    let prefill_profile = Arc::new(Profile::new());
    let options = gemfilter_core::RunOptions {
        profile: Some(Arc::clone(&prefill_profile)),
        ..run.clone()
    };
    let mut cache = decoder.new_cache(prompt.len() + steps + 1);
    let started = Instant::now();
    let mut next = argmax(&host(decoder.prefill(prompt, &mut cache, &options)?)) as u32;
    let prefill_s = started.elapsed().as_secs_f64();
    let decode_profile = Arc::new(Profile::new());
    let options = gemfilter_core::RunOptions {
        profile: Some(Arc::clone(&decode_profile)),
        ..run.clone()
    };
    let started = Instant::now();
    for _ in 0..steps {
        next = argmax(&host(decoder.decode_step(next, &mut cache, &options)?)) as u32;
    }
    let decode_s = started.elapsed().as_secs_f64();
    let mut sections: Vec<(String, f64, f64)> = prefill_profile
        .sections()
        .into_iter()
        .map(|(name, time, _)| (name.to_string(), time.as_secs_f64(), 0.0))
        .collect();
    for (name, time, _) in decode_profile.sections() {
        let per_step = time.as_secs_f64() / steps.max(1) as f64;
        match sections.iter_mut().find(|s| s.0 == name) {
            Some(section) => section.2 = per_step,
            None => sections.push((name.to_string(), 0.0, per_step)),
        }
    }
    let timed_prefill: f64 = sections.iter().map(|s| s.1).sum();
    let timed_step: f64 = sections.iter().map(|s| s.2).sum();
    sections.push((
        "other (host transfers, sampling, glue)".into(),
        prefill_s - timed_prefill,
        decode_s / steps.max(1) as f64 - timed_step,
    ));
    Ok(PassProfile {
        tokens: prompt.len(),
        prefill_s,
        decode_steps: steps,
        decode_s,
        sections,
    })
}

fn print_profile(tokens: usize, profile: &PassProfile) {
    let step = profile.decode_s / profile.decode_steps.max(1) as f64;
    println!(
        "profile at {tokens} tokens: prefill {:.2} s, decode {:.1} ms/step",
        profile.prefill_s,
        1e3 * step
    );
    println!(
        "  {:<40} {:>10} {:>7} {:>12} {:>7}",
        "section", "prefill s", "%", "decode ms", "%"
    );
    for (name, prefill, decode) in &profile.sections {
        println!(
            "  {name:<40} {prefill:>10.3} {:>6.1}% {:>12.3} {:>6.1}%",
            100.0 * prefill / profile.prefill_s,
            1e3 * decode,
            100.0 * decode / step.max(f64::MIN_POSITIVE)
        );
    }
}

/// What is benchmarked: a loaded model, or a published shape with random weights.
enum Subject {
    Model(Box<Model>),
    Synthetic {
        name: String,
        decoder: Box<Decoder>,
        layer: usize,
    },
}

impl Subject {
    fn decoder(&self) -> &Decoder {
        match self {
            Subject::Model(model) => model.decoder(),
            Subject::Synthetic { decoder, .. } => decoder,
        }
    }

    fn default_layer(&self) -> usize {
        match self {
            Subject::Model(model) => model.info().filter_layer.layer,
            Subject::Synthetic { layer, .. } => *layer,
        }
    }

    fn name(&self) -> String {
        match self {
            Subject::Model(model) => model.info().path.display().to_string(),
            Subject::Synthetic { name, .. } => format!("{name} (random weights)"),
        }
    }

    /// A prompt of about `length` tokens: the needle prompt for a real model, seeded random
    /// token ids for a synthetic one.
    fn prompt(&self, length: usize) -> Result<Vec<u32>> {
        match self {
            Subject::Model(model) => {
                let chat = model.chat_template().is_some();
                Ok(build_prompt(
                    model,
                    &Haystack::generated(),
                    &Needle::default(),
                    length,
                    0.5,
                    chat,
                )?
                .ids)
            }
            Subject::Synthetic { decoder, .. } => {
                let vocab = decoder.config().vocab_size;
                let mut rng = SplitMix64::new(length as u64);
                Ok((0..length).map(|_| rng.below(vocab) as u32).collect())
            }
        }
    }
}
