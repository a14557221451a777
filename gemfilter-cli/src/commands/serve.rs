//! `gemfilter serve`: an OpenAI-compatible HTTP server (see `gemfilter-serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use gemfilter_models::{Engine, EngineConfig, SelectorSpec};
use gemfilter_serve::{ServeConfig, router};

use super::{ComputeArgs, load_model_or_demo};

/// Arguments of `gemfilter serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Hugging Face model folder or GGUF file (default: the demo model, fetched if absent).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The id clients name the model by (default: the file or folder name).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Address to listen on. The default accepts local clients only; bind 0.0.0.0 only
    /// behind a firewall or with --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on /v1 routes (or set GEMFILTER_API_KEY).
    #[arg(long, env = "GEMFILTER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Default GemFilter token budget k of requests that give no `top_k`.
    #[arg(long, default_value_t = 1024)]
    pub top_k: usize,
    /// Default filter layer (default: the model's; see `inspect`).
    #[arg(long)]
    pub filter_layer: Option<usize>,
    /// Default selector spec.
    #[arg(long, default_value = "gemfilter")]
    pub selector: String,
    /// `max_tokens` of requests that give none.
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// Requests waiting at most; more get 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Memory for reusing prompt prefixes across requests (MiB; 0 disables reuse).
    #[arg(long, default_value_t = 1024)]
    pub prefix_cache_mib: usize,
    /// Largest request body accepted (MiB).
    #[arg(long, default_value_t = 16)]
    pub max_body_mib: usize,
    /// Do not print a line per request on stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Runs the subcommand until Ctrl-C.
pub fn run(args: ServeArgs) -> Result<()> {
    if args.top_k == 0 {
        bail!("--top-k must be at least 1 (got 0)");
    }
    if args.queue == 0 {
        bail!("--queue must be at least 1 (got 0)");
    }
    if args.default_max_tokens == 0 {
        bail!("--default-max-tokens must be at least 1 (got 0)");
    }
    args.selector
        .parse::<SelectorSpec>()
        .context("--selector")?;
    let address: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| {
            format!(
                "--host {} --port {} is not an address",
                args.host, args.port
            )
        })?;
    let compute = args.compute.resolve()?;
    let model = load_model_or_demo(args.model.as_deref(), &compute)?;
    let layers = model.decoder().config().num_layers;
    if let Some(layer) = args.filter_layer
        && layer >= layers
    {
        bail!(
            "--filter-layer {layer} is out of range: the model has {layers} layers (valid: 0..={})",
            layers - 1
        );
    }
    let model_id = args.model_id.clone().unwrap_or_else(|| {
        let path = &model.info().path;
        let name = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy();
        name.strip_suffix(".gguf").unwrap_or(&name).to_string()
    });
    let layer = args.filter_layer.unwrap_or(model.info().filter_layer.layer);
    let context = model.decoder().config().max_position_embeddings;
    let engine = Arc::new(Engine::start(
        model,
        EngineConfig {
            queue_capacity: args.queue,
            prefix_cache_bytes: args.prefix_cache_mib << 20,
        },
    ));
    let mut config = ServeConfig::new(model_id.clone());
    config.api_key = args.api_key.clone().filter(|k| !k.is_empty());
    config.max_body_bytes = args.max_body_mib.max(1) << 20;
    config.defaults.top_k = args.top_k;
    config.defaults.filter_layer = args.filter_layer;
    config.defaults.selector = args.selector.clone();
    config.defaults.max_tokens = args.default_max_tokens;
    config.log_requests = !args.quiet;
    let app = router(engine, config);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        let bound = listener.local_addr().context("listening address")?;
        eprintln!(
            "serving `{model_id}` on {} ({} backend; GemFilter k {} at layer {layer}, context {context}; \
             prefix cache {} MiB; queue {}{})",
            bound,
            compute.backend.name(),
            args.top_k,
            args.prefix_cache_mib,
            args.queue,
            if args.api_key.is_some() { "; API key required" } else { "" }
        );
        println!("http://{bound}/v1");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
                eprintln!("shutting down: finishing the requests in flight");
            })
            .await
            .context("the server failed")
    })
}
