//! Examples live in `basic.rs` and `custom_selector.rs`; run them with `cargo run -p gemfilter-examples --example NAME`.
