//! Corpus BLEU exactly as sacreBLEU computes it by default: the `13a` tokenizer (mteval-v13a),
//! case-sensitive, n-grams up to 4, one reference per sentence, brevity penalty against the
//! reference length, and `exp` smoothing (which changes the score only when some n-gram
//! order has no match at all); `none` turns smoothing off.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

/// What a zero n-gram precision becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smoothing {
    /// sacreBLEU's default (mteval's NIST smoothing): the k-th zero precision is `1 / (2^k · total)`.
    Exp,
    /// A zero precision stays zero, and so does the score.
    None,
}

/// A corpus score with the statistics behind it, as sacreBLEU prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Bleu {
    pub score: f64,
    /// n-gram precisions in percent, n = 1..=4.
    pub precisions: [f64; 4],
    pub brevity_penalty: f64,
    pub hyp_len: usize,
    pub ref_len: usize,
}

impl std::fmt::Display for Bleu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.precisions;
        write!(
            f,
            "BLEU = {:.2} {:.1}/{:.1}/{:.1}/{:.1} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            p[0],
            p[1],
            p[2],
            p[3],
            self.brevity_penalty,
            self.hyp_len as f64 / self.ref_len.max(1) as f64,
            self.hyp_len,
            self.ref_len
        )
    }
}

static PATTERNS: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    let re = |pattern: &str| Regex::new(pattern).expect("valid 13a pattern");
    [
        // Punctuation and symbols, Western languages.
        (re(r"([\{-~\[-` -&\(-\+:-@/])"), " $1 "),
        // Period and comma unless preceded by a digit…
        (re(r"([^0-9])([\.,])"), "$1 $2 "),
        // …or followed by one.
        (re(r"([\.,])([^0-9])"), " $1 $2"),
        // A dash after a digit.
        (re(r"([0-9])(-)"), "$1 $2 "),
    ]
});

/// sacreBLEU's `13a` tokenization of one segment, tokens joined by single spaces.
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (pattern, replacement) in PATTERNS.iter() {
        line = pattern.replace_all(&line, *replacement).into_owned();
    }
    line.split(python_whitespace).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" ")
}

/// What Python's `str.split()` splits on: Unicode whitespace plus the four ASCII separators.
fn python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Corpus BLEU of `hypotheses` against one reference each.
pub fn corpus_bleu(
    hypotheses: &[impl AsRef<str>],
    references: &[impl AsRef<str>],
    smoothing: Smoothing,
) -> Bleu {
    assert_eq!(hypotheses.len(), references.len(), "one reference per hypothesis");
    let (mut correct, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut hyp_len, mut ref_len) = (0, 0);
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp = tokenize_13a(hyp.as_ref().trim_end());
        let reference = tokenize_13a(reference.as_ref().trim_end());
        let (hyp, reference): (Vec<&str>, Vec<&str>) = (
            hyp.split(' ').filter(|t| !t.is_empty()).collect(),
            reference.split(' ').filter(|t| !t.is_empty()).collect(),
        );
        hyp_len += hyp.len();
        ref_len += reference.len();
        for n in 1..=4 {
            let ref_counts = ngram_counts(&reference, n);
            for (ngram, count) in ngram_counts(&hyp, n) {
                total[n - 1] += count;
                correct[n - 1] += count.min(ref_counts.get(&ngram).copied().unwrap_or(0));
            }
        }
    }
    score(correct, total, hyp_len, ref_len, smoothing)
}

fn ngram_counts<'t>(tokens: &'t [&str], n: usize) -> HashMap<&'t [&'t str], usize> {
    let mut counts = HashMap::new();
    for ngram in tokens.windows(n) {
        *counts.entry(ngram).or_insert(0) += 1;
    }
    counts
}

fn score(
    correct: [usize; 4],
    total: [usize; 4],
    hyp_len: usize,
    ref_len: usize,
    smoothing: Smoothing,
) -> Bleu {
    let brevity_penalty = match (hyp_len < ref_len, hyp_len) {
        (false, _) => 1.0,
        (true, 0) => 0.0,
        (true, _) => (1.0 - ref_len as f64 / hyp_len as f64).exp(),
    };
    let mut precisions = [0.0; 4];
    let blank = Bleu { score: 0.0, precisions, brevity_penalty, hyp_len, ref_len };
    if correct.iter().all(|&c| c == 0) {
        return blank;
    }
    let mut halvings = 1.0;
    for n in 0..4 {
        if total[n] == 0 {
            break;
        }
        precisions[n] = match (correct[n], smoothing) {
            (0, Smoothing::Exp) => {
                halvings *= 2.0;
                100.0 / (halvings * total[n] as f64)
            }
            (0, Smoothing::None) => 0.0,
            (c, _) => 100.0 * c as f64 / total[n] as f64,
        };
    }
    // sacreBLEU's `my_log`: log 0 is a huge negative number, so the score is 0.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let score = brevity_penalty * (precisions.iter().map(|&p| log(p)).sum::<f64>() / 4.0).exp();
    Bleu { score, precisions, ..blank }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_as_13a() {
        assert_eq!(tokenize_13a("A man, in a \"red\" hat."), "A man , in a \" red \" hat .");
        assert_eq!(
            tokenize_13a("It costs 3.50, or 1,000-2 &amp; more!"),
            "It costs 3.50 , or 1,000 - 2 & more !"
        );
    }

    #[test]
    fn identical_corpus_scores_100_and_empty_scores_0() {
        let refs = ["A dog runs across the green field .", "Two men are talking outside a shop ."];
        assert!((corpus_bleu(&refs, &refs, Smoothing::Exp).score - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&["", ""], &refs, Smoothing::Exp).score, 0.0);
    }
}
