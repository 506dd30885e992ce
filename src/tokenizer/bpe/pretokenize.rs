//! GPT-2 pre-tokenization: text is cut into pieces that BPE merges never cross.
//!
//! The GPT-2 pattern ends in `\s+(?!\S)|\s+`: a run of whitespace gives its last character
//! to the word that follows (`"  hello"` → `" "`, `" hello"`). The `regex` crate has no
//! look-ahead, so the pattern below stops at `\s+` and [`PreTokens`] hands that last
//! character back by hand, which yields exactly the look-ahead pattern's pieces (tested
//! against `fancy-regex`).

use std::io::Read;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;

/// The GPT-2 pattern as written by OpenAI, for reference and for tests.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+")
        .expect("valid regex")
});

/// The GPT-2 pre-tokens of `text`, in order; they concatenate back to `text`.
pub fn pre_tokens(text: &str) -> PreTokens<'_> {
    PreTokens { text, pos: 0 }
}

pub struct PreTokens<'t> {
    text: &'t str,
    pos: usize,
}

impl<'t> Iterator for PreTokens<'t> {
    type Item = &'t str;

    fn next(&mut self) -> Option<&'t str> {
        let text = self.text;
        if self.pos >= text.len() {
            return None;
        }
        // Every character is whitespace, a letter, a number or something else, so a match
        // always starts at `pos`.
        let found = PATTERN.find_at(text, self.pos).map_or(text.len(), |m| m.end());
        let mut end = found;
        let piece = &text[self.pos..end];
        let mut chars = piece.chars();
        let last = chars.next_back().filter(|c| c.is_whitespace());
        let followed_by_text = text[end..].chars().next().is_some_and(|c| !c.is_whitespace());
        // `\s+(?!\S)`: a whitespace run of two or more characters before text leaves its
        // last character to the next piece.
        if let (Some(last), true, Some(_)) = (last, followed_by_text, chars.next()) {
            end -= last.len_utf8();
        }
        let piece = &text[self.pos..end];
        self.pos = end;
        Some(piece)
    }
}

/// A piece of text between special tokens, or the index of a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'t> {
    Text(&'t str),
    Special(usize),
}

/// Finds special tokens in text: leftmost first, the longest where several start together.
#[derive(Debug, Clone)]
pub struct SpecialMatcher {
    matcher: Option<AhoCorasick>,
}

impl SpecialMatcher {
    /// Fails only when the special tokens are too many or too long for one automaton.
    pub fn new(specials: &[String]) -> Result<Self, String> {
        if specials.is_empty() {
            return Ok(Self { matcher: None });
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(specials)
            .map_err(|e| format!("cannot match {} special token(s): {e}", specials.len()))?;
        Ok(Self { matcher: Some(matcher) })
    }

    /// `text` cut at its special tokens.
    pub fn segments<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        let Some(matcher) = &self.matcher else {
            return if text.is_empty() { vec![] } else { vec![Segment::Text(text)] };
        };
        let mut segments = Vec::new();
        let mut last = 0;
        for m in matcher.find_iter(text) {
            if m.start() > last {
                segments.push(Segment::Text(&text[last..m.start()]));
            }
            segments.push(Segment::Special(m.pattern().as_usize()));
            last = m.end();
        }
        if last < text.len() {
            segments.push(Segment::Text(&text[last..]));
        }
        segments
    }
}

/// A byte position at or after `from` where `text` can be cut without changing its
/// pre-tokens: after a newline that stands between two visible ASCII characters. (After a
/// longer whitespace run the cut would move the run's last character: `"a\n\nB"` is
/// `a`, `\n`, `\n`, `B`, but `"a\n\n"` alone ends in `\n\n`.) `None` when there is none.
pub fn safe_cut_after(text: &[u8], from: usize) -> Option<usize> {
    (from.max(2)..text.len()).find(|&i| is_cut(text, i))
}

/// The last safe cut point before `until` (see [`safe_cut_after`]).
pub fn safe_cut_before(text: &[u8], until: usize) -> Option<usize> {
    (2..until.min(text.len())).rev().find(|&i| is_cut(text, i))
}

fn is_cut(text: &[u8], i: usize) -> bool {
    text[i - 2].is_ascii_graphic() && text[i - 1] == b'\n' && text[i].is_ascii_graphic()
}

/// `text` cut at safe points into pieces of roughly `target` bytes (for parallel work).
pub fn chunks(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = match safe_cut_after(bytes, start + target) {
            Some(end) if start + target < text.len() => end,
            _ => text.len(),
        };
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// A UTF-8 stream read in blocks of about `block` bytes, each cut at a safe point, so that
/// pre-tokenizing block by block gives the pieces of the whole stream.
pub struct TextBlocks<R> {
    reader: R,
    block: usize,
    pending: Vec<u8>,
    offset: u64,
    done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeStreamError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 { offset: u64 },
    #[error("{0}")]
    Encode(String),
    /// The sink's error (writing the ids), which names its own file.
    #[error(transparent)]
    Sink(std::io::Error),
}

impl<R: Read> TextBlocks<R> {
    pub fn new(reader: R, block: usize) -> Self {
        Self { reader, block: block.max(1), pending: Vec::new(), offset: 0, done: false }
    }

    /// Bytes handed out so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    pub fn next_block(&mut self) -> Result<Option<String>, EncodeStreamError> {
        while !self.done {
            let read = (&mut self.reader)
                .take(self.block as u64)
                .read_to_end(&mut self.pending)
                .map_err(EncodeStreamError::Io)?;
            self.done = read == 0;
            let cut = if self.done {
                self.pending.len()
            } else {
                safe_cut_before(&self.pending, self.pending.len()).unwrap_or(0)
            };
            if cut == 0 {
                continue; // no safe point yet: read more
            }
            let rest = self.pending.split_off(cut);
            let bytes = std::mem::replace(&mut self.pending, rest);
            let text = String::from_utf8(bytes).map_err(|e| EncodeStreamError::NotUtf8 {
                offset: self.offset + e.utf8_error().valid_up_to() as u64,
            })?;
            self.offset += cut as u64;
            return Ok(Some(text));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        pre_tokens(text).collect()
    }

    #[test]
    fn gpt2_pieces() {
        assert_eq!(split("Hello world"), ["Hello", " world"]);
        assert_eq!(split("I'll go  now\n\nOK"), ["I", "'ll", " go", " ", " now", "\n", "\n", "OK"]);
        assert_eq!(split("x   "), ["x", "   "]);
        assert_eq!(split("a 123!? ü"), ["a", " 123", "!?", " ü"]);
    }

    #[test]
    fn specials_split_leftmost_longest() {
        let m = SpecialMatcher::new(&["<|a|>".into(), "<|a|><|b|>".into()]).unwrap();
        assert_eq!(
            m.segments("x<|a|><|b|>y<|a|>"),
            [Segment::Text("x"), Segment::Special(1), Segment::Text("y"), Segment::Special(0)]
        );
    }

    #[test]
    fn chunks_do_not_change_pieces() {
        let text = "First line\n  indented\nSecond\n\n\nThird one\n".repeat(50);
        let whole = split(&text);
        let by_chunk: Vec<&str> = chunks(&text, 37).into_iter().flat_map(split).collect();
        assert_eq!(whole, by_chunk);
    }
}
