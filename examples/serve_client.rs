//! A client of `gemfilter serve`: two questions over one long document, streamed, with the time
//! to first token of each and how much of the prompt the server reused.
//!
//! ```text
//! cargo run --release -p gemfilter-cli -- serve            # in one terminal
//! cargo run --release -p gemfilter-examples --example serve_client -- DOCUMENT.txt
//! ```
//!
//! `GEMFILTER_URL` names another server (default `http://127.0.0.1:8080/v1`), `GEMFILTER_API_KEY`
//! its key. Any OpenAI-compatible client works the same way; this one uses `reqwest`.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: serve_client DOCUMENT.txt")?;
    let document = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let base = std::env::var("GEMFILTER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/v1".into());
    let key = std::env::var("GEMFILTER_API_KEY").ok();
    let client = reqwest::Client::new();
    for question in ["What is this document about?", "Who is mentioned in it?"] {
        let body = json!({
            "messages": [{ "role": "user", "content": format!("{document}\n\nQuestion: {question}") }],
            "max_tokens": 64,
            "temperature": 0,
            "stream": true,
            "stream_options": { "include_usage": true },
            // This server's extension: GemFilter (the default) with k = 1024.
            "method": "gemfilter",
            "top_k": 1024,
        });
        let mut request = client.post(format!("{base}/chat/completions")).json(&body);
        if let Some(key) = &key {
            request = request.bearer_auth(key);
        }
        let started = Instant::now();
        let mut response = request
            .send()
            .await
            .context("is `gemfilter serve` running?")?;
        if !response.status().is_success() {
            bail!("{}: {}", response.status(), response.text().await?);
        }
        print!("Q: {question}\nA: ");
        let (mut buffer, mut first_token, mut usage) = (String::new(), None, Value::Null);
        while let Some(bytes) = response.chunk().await? {
            buffer.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue; // a keep-alive comment
                };
                if data == "[DONE]" {
                    continue;
                }
                let chunk: Value = serde_json::from_str(data)?;
                if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
                    if !text.is_empty() && first_token.is_none() {
                        first_token = Some(started.elapsed());
                    }
                    print!("{text}");
                }
                if !chunk["usage"].is_null() {
                    usage = chunk["usage"].clone();
                }
            }
        }
        println!(
            "\n[first token after {:.2} s; prompt {} tokens, {} reused from the previous question, {} kept]\n",
            first_token.unwrap_or_default().as_secs_f64(),
            usage["prompt_tokens"],
            usage["prompt_tokens_details"]["cached_tokens"],
            usage["kept_tokens"],
        );
    }
    Ok(())
}
