//! Where sentences and lines start in a tokenised prompt, for span-aware selection
//! ([`gemfilter_core::SpanSelector`]).

use crate::error::Result;
use crate::hf::tokenizer::TextTokenizer;

/// What a segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segmentation {
    /// A new segment starts after a token ending a sentence (`.`, `!`, `?`, optionally followed
    /// by closing quotes or brackets) or holding a line break.
    Sentences,
    /// A new segment starts after a token holding a line break.
    Lines,
}

/// First position of every segment of `ids` (ascending, starting with 0), read from the text
/// of each token.
pub fn segment_starts(
    tokenizer: &TextTokenizer,
    ids: &[u32],
    segmentation: Segmentation,
) -> Result<Vec<usize>> {
    let mut starts = Vec::new();
    let mut at_start = true;
    for (position, &id) in ids.iter().enumerate() {
        if at_start {
            starts.push(position);
        }
        let text = tokenizer.decode(&[id], false)?;
        at_start = ends_segment(&text, segmentation);
    }
    if starts.is_empty() {
        starts.push(0);
    }
    Ok(starts)
}

/// Whether a token with this text closes a segment.
fn ends_segment(text: &str, segmentation: Segmentation) -> bool {
    if text.contains('\n') {
        return true;
    }
    match segmentation {
        Segmentation::Lines => false,
        Segmentation::Sentences => {
            let trimmed = text.trim_end_matches(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ']' | '”' | '’')
            });
            trimmed.ends_with(['.', '!', '?'])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_and_line_ends() {
        for (text, sentence, line) in [
            (".", true, false),
            ("?\"", true, false),
            ("!)", true, false),
            (" word", false, false),
            (".\n", true, true),
            ("\n\n", true, true),
            ("3.5", false, false),
        ] {
            assert_eq!(
                ends_segment(text, Segmentation::Sentences),
                sentence,
                "{text:?}"
            );
            assert_eq!(ends_segment(text, Segmentation::Lines), line, "{text:?}");
        }
    }
}
