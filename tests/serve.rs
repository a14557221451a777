//! The OpenAI-compatible server end to end over real HTTP on 127.0.0.1: answers equal the
//! library's, streams add up to them, follow-up questions reuse the document, every bad input
//! gets an OpenAI-shaped error with the right status, a full queue answers 503, a client that
//! leaves cancels its work, a bounded load test completes, and the official `openai` Python
//! client works against it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gemfilter_models::{Engine, EngineConfig, Mode, Model, Request};
use gemfilter_serve::{ServeConfig, router};
use gemfilter_tests::{Device, fixture_dir};
use serde_json::{Value, json};

const MODEL_ID: &str = "tiny-llama";

/// A server on an ephemeral port of 127.0.0.1 over the `llama-gqa` fixture.
struct Server {
    base: String,
    engine: Arc<Engine>,
    model: Arc<Model>,
}

async fn start(engine_config: EngineConfig, configure: impl FnOnce(&mut ServeConfig)) -> Server {
    let model = Arc::new(Model::load(fixture_dir("llama-gqa"), &Device::flex()).unwrap());
    let engine = Arc::new(Engine::start(model.clone(), engine_config));
    let mut config = ServeConfig::new(MODEL_ID);
    config.defaults.top_k = 24;
    config.defaults.max_tokens = 16;
    configure(&mut config);
    let app = router(engine.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        base: format!("http://{address}/v1"),
        engine,
        model,
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        queue_capacity: 16,
        prefix_cache_bytes: 64 << 20,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `data:` payloads of a server-sent event stream.
async fn stream(base: &str, path: &str, body: Value) -> Vec<String> {
    let response = client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

fn document() -> String {
    let words = [
        "river", "stone", "market", "lantern", "orchard", "violet", "harbor", "copper",
    ];
    (0..30)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn chat(question: &str) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [
            { "role": "system", "content": "Answer from the document." },
            { "role": "user", "content": format!("{}\n\nQuestion: {question}", document()) },
        ],
        "max_tokens": 12,
        "temperature": 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_library_and_streams_add_up() {
    let server = start(engine_config(), |_| {}).await;
    let (status, models) = client_get(&server.base, "/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], MODEL_ID);

    let body = chat("Which word comes first?");
    let (status, whole) = post(&server.base, "/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    let usage = &whole["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        usage["kept_tokens"], 24,
        "GemFilter keeps the default k: {whole}"
    );
    assert_eq!(whole["gemfilter"]["method"], "gemfilter");

    // The same request through the library.
    let messages = vec![
        gemfilter_models::ChatMessage::new("system", "Answer from the document."),
        gemfilter_models::ChatMessage::new(
            "user",
            format!("{}\n\nQuestion: Which word comes first?", document()),
        ),
    ];
    let ids = server.model.chat_ids(&messages).unwrap();
    assert_eq!(usage["prompt_tokens"], ids.len());
    let request = Request {
        mode: Mode::GemFilter {
            filter_layer: None,
            top_k: 24,
        },
        max_new_tokens: 12,
        ..Request::full()
    };
    let library = server.model.generate_ids(&ids, &request).unwrap();
    assert_eq!(text, library.text);

    // Streamed: a role chunk, content chunks adding up to the same text, the finish reason,
    // the usage chunk, [DONE].
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({ "include_usage": true });
    let events = stream(&server.base, "/chat/completions", streaming).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );

    // Text completions, whole and streamed, full attention.
    let completion = json!({
        "model": MODEL_ID, "prompt": document(), "max_tokens": 10, "temperature": 0,
        "method": "full",
    });
    let (status, whole) = post(&server.base, "/completions", completion.clone()).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "text_completion");
    assert_eq!(whole["gemfilter"]["method"], "full");
    let mut streaming = completion;
    streaming["stream"] = json!(true);
    let events = stream(&server.base, "/completions", streaming).await;
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());

    // A stop sequence from the middle of the answer cuts it there.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
        let mut stopping = body;
        stopping["stop"] = json!([stop.clone()]);
        let (status, stopped) = post(&server.base, "/chat/completions", stopping).await;
        assert_eq!(status, 200);
        let cut = text.find(&stop).unwrap();
        assert_eq!(stopped["choices"][0]["message"]["content"], text[..cut]);
        assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    }
}

async fn client_get(base: &str, path: &str) -> (u16, Value) {
    let response = client().get(format!("{base}{path}")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_up_questions_reuse_the_document() {
    let warm = start(engine_config(), |_| {}).await;
    let cold = start(
        EngineConfig {
            prefix_cache_bytes: 0,
            ..engine_config()
        },
        |_| {},
    )
    .await;
    for method in ["gemfilter", "full"] {
        for (round, question) in ["Which word comes first?", "How many harbors are there?"]
            .iter()
            .enumerate()
        {
            let mut body = chat(question);
            body["method"] = json!(method);
            let (_, warm_answer) = post(&warm.base, "/chat/completions", body.clone()).await;
            let (_, cold_answer) = post(&cold.base, "/chat/completions", body).await;
            let cached = warm_answer["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap();
            let prompt = warm_answer["usage"]["prompt_tokens"].as_u64().unwrap();
            println!("{method} question {round}: {cached} of {prompt} prompt tokens reused");
            if round == 1 {
                // Everything up to the question (the document and the template around it).
                assert!(cached + 40 >= prompt, "{method}: the document is reused");
            }
            assert_eq!(
                cold_answer["usage"]["prompt_tokens_details"]["cached_tokens"],
                0
            );
            assert_eq!(
                warm_answer["choices"][0]["message"]["content"],
                cold_answer["choices"][0]["message"]["content"],
                "{method} question {round}"
            );
        }
    }
    let stats = warm.engine.stats().prefix_cache;
    assert!(stats.hits >= 2 && stats.bytes > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_openai_shaped_errors() {
    let server = start(engine_config(), |config| config.max_body_bytes = 64 << 10).await;
    let base = &server.base;
    let raw = |body: &'static str| {
        let url = format!("{base}/chat/completions");
        async move {
            let response = client()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let hi = json!([{ "role": "user", "content": "hi" }]);
    // Each case: the status expected, the response, and what the error must name.
    let cases: Vec<(u16, (u16, Value), &str)> = vec![
        (400, raw("{not json").await, "malformed"),
        (400, raw("").await, "empty"),
        (
            400,
            post(base, "/chat/completions", json!({ "messages": "hi" })).await,
            "type",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "temperature": "hot" }),
            )
            .await,
            "type",
        ),
        (
            400,
            post(base, "/chat/completions", json!({ "messages": [] })).await,
            "messages",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "temperature": 3 }),
            )
            .await,
            "temperature",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "top_p": 0 }),
            )
            .await,
            "top_p",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "max_tokens": 0 }),
            )
            .await,
            "max_tokens",
        ),
        (
            400,
            post(base, "/chat/completions", json!({ "messages": hi, "n": 3 })).await,
            "n",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "top_k": 0 }),
            )
            .await,
            "top_k",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "filter_layer": 99 }),
            )
            .await,
            "filter_layer",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "method": "magic" }),
            )
            .await,
            "method",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "method": "full", "top_k": 3 }),
            )
            .await,
            "top_k",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "selector": "window=x" }),
            )
            .await,
            "selector",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "stop": ["", "x"] }),
            )
            .await,
            "stop",
        ),
        (
            400,
            post(
                base,
                "/chat/completions",
                json!({ "messages": hi, "method": "snapkv", "budget": 8 }),
            )
            .await,
            "budget",
        ),
        (
            400,
            post(base, "/completions", json!({ "prompt": [1, 2, 100000] })).await,
            "prompt",
        ),
        (
            400,
            post(
                base,
                "/completions",
                json!({ "prompt": "river ".repeat(2000) }),
            )
            .await,
            "context_length_exceeded",
        ),
        (
            400,
            post(
                base,
                "/completions",
                json!({ "prompt": "x", "max_tokens": 5000 }),
            )
            .await,
            "context_length_exceeded",
        ),
        (
            404,
            post(
                base,
                "/chat/completions",
                json!({ "model": "gpt-4o", "messages": hi }),
            )
            .await,
            "model_not_found",
        ),
        (404, client_get(base, "/nowhere").await, "not_found"),
        (
            404,
            client_get(base, "/models/gpt-4o").await,
            "model_not_found",
        ),
        (
            413,
            post(
                base,
                "/completions",
                json!({ "prompt": "x".repeat(100 << 10) }),
            )
            .await,
            "request_too_large",
        ),
    ];
    for (status, (actual, body), what) in &cases {
        assert_eq!(actual, status, "{what}: {body}");
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert!(error["type"].is_string(), "{what}: {body}");
        let named = error["param"].as_str() == Some(what)
            || error["code"].as_str() == Some(what)
            || error["message"].as_str().unwrap().contains(what)
            || matches!(*what, "malformed" | "empty" | "type");
        assert!(named, "{what} not named in {body}");
        let expected_type = if *status == 400 || *status == 404 || *status == 413 {
            "invalid_request_error"
        } else {
            "server_error"
        };
        assert_eq!(error["type"], expected_type, "{what}: {body}");
    }
    // With an API key: 401 without it or with a wrong one, 200 with it; /health stays open.
    let keyed = start(engine_config(), |config| {
        config.api_key = Some("s3cret".into())
    })
    .await;
    let request = |key: Option<&str>| {
        let mut builder = client()
            .post(format!("{}/chat/completions", keyed.base))
            .json(&json!({ "messages": hi, "max_tokens": 2 }));
        if let Some(key) = key {
            builder = builder.bearer_auth(key);
        }
        async move {
            let response = builder.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = request(None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["type"], "authentication_error");
    assert_eq!(request(Some("wrong")).await.0, 401);
    assert_eq!(request(Some("s3cret")).await.0, 200);
    let health = client()
        .get(keyed.base.replace("/v1", "/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Long requests for the queue tests: full attention, many tokens, EOS ignored by asking
/// for tokens until the context's end is far.
fn long_request() -> Value {
    json!({ "prompt": document(), "max_tokens": 300, "temperature": 0.8, "seed": 1,
            "method": "full" })
    // (prompt ~130 tokens + 300 fit the fixture's 512-token context)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_and_a_client_that_leaves_cancels() {
    let server = start(
        EngineConfig {
            queue_capacity: 1,
            prefix_cache_bytes: 0,
        },
        |_| {},
    )
    .await;
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let url = format!("{}/completions", server.base);
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .json(&long_request())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                (status, retry, response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut by_status = std::collections::BTreeMap::new();
    for request in requests {
        let (status, retry, body) = request.await.unwrap();
        *by_status.entry(status).or_insert(0) += 1;
        match status {
            200 => assert!(body["choices"][0]["text"].is_string()),
            503 => {
                assert_eq!(retry.as_deref(), Some("2"));
                assert_eq!(body["error"]["code"], "overloaded");
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    println!("8 concurrent requests with a queue of 1: {by_status:?}");
    assert!(
        by_status.get(&503).copied().unwrap_or(0) >= 1,
        "{by_status:?}"
    );
    // At least the first request is answered; how many more get the freed queue slot depends
    // on timing.
    assert!(
        by_status.get(&200).copied().unwrap_or(0) >= 1,
        "{by_status:?}"
    );
    assert_eq!(by_status.values().sum::<usize>(), 8, "{by_status:?}");
    let stats = server.engine.stats();
    assert_eq!(stats.rejected as usize, by_status[&503]);
    assert_eq!(stats.completed as usize, by_status[&200]);

    // Clients that leave while their request waits behind others: the engine cancels them
    // (skips them) instead of answering nobody. Three long requests keep the worker busy.
    let server = start(
        EngineConfig {
            queue_capacity: 8,
            prefix_cache_bytes: 0,
        },
        |_| {},
    )
    .await;
    let blockers: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/completions", server.base);
            tokio::spawn(async move {
                let response = client()
                    .post(url)
                    .json(&long_request())
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    // A streaming client: the event stream starts at once; it leaves without reading.
    let mut body = long_request();
    body["stream"] = json!(true);
    let response = client()
        .post(format!("{}/completions", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // A whole-response client that gives up before the answer.
    let url = format!("{}/completions", server.base);
    let abandoned = tokio::spawn(async move {
        let _ = client().post(url).json(&long_request()).send().await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    abandoned.abort();
    for blocker in blockers {
        assert_eq!(blocker.await.unwrap(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.engine.stats().cancelled < 2 {
        assert!(
            Instant::now() < deadline,
            "the clients that left were not cancelled: {:?}",
            server.engine.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.engine.stats();
    println!("after two clients left: {stats:?}");
    assert_eq!((stats.completed, stats.cancelled, stats.failed), (3, 2, 0));
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// 8 concurrent clients × 4 requests each, every request with a time limit: each completes
/// or gets a documented error (503), and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_test() {
    let server = start(engine_config(), |_| {}).await;
    // Warm up once, then measure resident memory around the load.
    post(&server.base, "/chat/completions", chat("warm up")).await;
    let before = peak_rss_mib();
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let base = server.base.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for r in 0..4 {
                    let mut body = chat(&format!("Question {r} from client {c}?"));
                    if (c + r) % 2 == 1 {
                        body["stream"] = json!(true);
                    }
                    body["method"] = json!(["gemfilter", "full", "snapkv", "gemfilter"][r % 4]);
                    if r % 4 == 2 {
                        body["budget"] = json!(48);
                    }
                    let sent = Instant::now();
                    let response = tokio::time::timeout(
                        Duration::from_secs(60),
                        client()
                            .post(format!("{base}/chat/completions"))
                            .json(&body)
                            .send(),
                    )
                    .await
                    .expect("each request finishes within its time limit")
                    .unwrap();
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap();
                    assert!(
                        status == 200 || status == 503,
                        "undocumented status {status}: {text}"
                    );
                    if status == 200 && body["stream"] == json!(true) {
                        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                    }
                    outcomes.push((status, sent.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for client in clients {
        for (status, latency) in client.await.unwrap() {
            *statuses.entry(status).or_insert(0) += 1;
            latencies.push(latency);
        }
    }
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let after = peak_rss_mib();
    println!(
        "load: 32 requests in {:.2}s, statuses {statuses:?}, p50 {:.0} ms, p95 {:.0} ms, \
         RSS {before:.0} → {after:.0} MiB, engine {:?}",
        started.elapsed().as_secs_f64(),
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.95).as_secs_f64() * 1e3,
        server.engine.stats()
    );
    assert_eq!(latencies.len(), 32);
    assert_eq!(
        statuses.get(&200),
        Some(&32),
        "a queue of 16 holds 8 clients"
    );
    assert!(
        after - before < 256.0,
        "memory grew by {:.0} MiB",
        after - before
    );
}

/// The official `openai` Python client against the server: chat and completions, whole and
/// streamed, the method field through `extra_body`, and its error classes. The client comes
/// from PyPI (CI installs it, see `.ci/run`); `GEMFILTER_OPENAI_PYTHON` names the interpreter.
/// Without it the test says so and passes, unless `GEMFILTER_REQUIRE_OPENAI=1` (CI) demands it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client() {
    let python = std::env::var("GEMFILTER_OPENAI_PYTHON").unwrap_or_else(|_| "python3".into());
    let required = std::env::var("GEMFILTER_REQUIRE_OPENAI").is_ok_and(|v| v == "1");
    let has_client = std::process::Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        assert!(
            !required,
            "GEMFILTER_REQUIRE_OPENAI=1 but `{python}` cannot import openai"
        );
        eprintln!(
            "SKIPPED: `{python}` has no `openai` package (pip install openai; set GEMFILTER_OPENAI_PYTHON)"
        );
        return;
    }
    let server = start(engine_config(), |config| {
        config.api_key = Some("test-key".into())
    })
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("serve/openai_client.py");
    let output = tokio::process::Command::new(&python)
        .arg(script)
        .args([
            "--base-url",
            &server.base,
            "--api-key",
            "test-key",
            "--model",
            MODEL_ID,
        ])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("the Python client finishes within 5 minutes")
        .unwrap();
    println!("{}", String::from_utf8_lossy(&output.stdout));
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the openai client checks failed");
}
