//! Hugging Face model folders: `config.json`, safetensors weights, `tokenizer.json`, chat
//! template.

pub mod chat;
pub mod json;
pub mod rope;
pub mod tokenizer;
pub mod weights;
