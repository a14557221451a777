//! Examples live in `basic.rs`, `custom_selector.rs`, `baselines.rs`, `propagation.rs` and `serve_client.rs`; run them with `cargo run -p gemfilter-examples --example NAME`.
