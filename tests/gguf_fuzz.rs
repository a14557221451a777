//! Property-based fuzzing of the GGUF parser: random bytes and randomly mutated real headers
//! must give `Ok` or a descriptive `Err`, never a panic, a hang or a huge allocation. Bounded
//! (a fixed number of cases) so it runs in CI.

use gemfilter_models::Model;
use gemfilter_models::gguf::reader::parse;
use gemfilter_tests::{Device, fixture_dir};
use proptest::prelude::*;

fn valid() -> Vec<u8> {
    std::fs::read(fixture_dir("gguf").join("llama-gqa.gguf")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes after a valid magic and version.
    #[test]
    fn random_headers_never_panic(version in 0u32..5, body in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&body);
        if let Err(message) = parse(&bytes) {
            prop_assert!(!message.is_empty());
        }
    }

    /// A real file with bytes of its header and directory overwritten.
    #[test]
    fn mutated_headers_never_panic(edits in proptest::collection::vec((0usize..12_000, any::<u8>()), 1..16)) {
        let mut bytes = valid();
        for (at, value) in edits {
            let at = at % bytes.len();
            bytes[at] = value;
        }
        let _ = parse(&bytes);
    }

    /// A real file cut short anywhere.
    #[test]
    fn truncated_files_never_panic(cut in 0usize..250_000) {
        let bytes = valid();
        let cut = cut % bytes.len();
        prop_assert!(parse(&bytes[..cut]).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whole-model loading of mutated files (metadata, tokenizer, tensors): errors, not panics.
    #[test]
    fn mutated_files_load_or_fail_cleanly(edits in proptest::collection::vec((0usize..12_000, any::<u8>()), 1..6)) {
        let mut bytes = valid();
        let len = bytes.len();
        for (at, value) in edits {
            bytes[at % len] = value;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = Model::load(&path, &Device::flex()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
