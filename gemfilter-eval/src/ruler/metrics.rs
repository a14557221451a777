//! RULER's metrics (`eval/synthetic/constants.py`), per sample in [0, 1].

/// RULER's `postprocess_pred`: trim, control characters become line breaks, trim again.
pub fn postprocess(prediction: &str) -> String {
    prediction
        .trim()
        .chars()
        .map(|c| if (c as u32) < 0x20 { '\n' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `string_match_all`: the fraction of references found in the prediction (case-insensitive).
pub fn string_match_all(prediction: &str, references: &[String]) -> f64 {
    if references.is_empty() {
        return 0.0;
    }
    let prediction = prediction.to_lowercase();
    references
        .iter()
        .filter(|r| prediction.contains(&r.to_lowercase()))
        .count() as f64
        / references.len() as f64
}

/// `string_match_part`: 1 when any reference is found in the prediction (case-insensitive).
pub fn string_match_part(prediction: &str, references: &[String]) -> f64 {
    let prediction = prediction.to_lowercase();
    if references
        .iter()
        .any(|r| prediction.contains(&r.to_lowercase()))
    {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn metrics_follow_ruler() {
        assert_eq!(
            string_match_all("1234 and 5678", &refs(&["1234", "5678"])),
            1.0
        );
        assert_eq!(string_match_all("only 1234", &refs(&["1234", "5678"])), 0.5);
        assert_eq!(string_match_all("nothing", &refs(&["1234"])), 0.0);
        assert_eq!(
            string_match_part("It was PARIS.", &refs(&["paris", "rome"])),
            1.0
        );
        assert_eq!(string_match_part("London", &refs(&["paris", "rome"])), 0.0);
        assert_eq!(postprocess("  a\tb\u{1}c \n"), "a\nb\nc");
    }
}
