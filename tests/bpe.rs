//! Byte-level BPE: the pre-tokenizer against the GPT-2 pattern, round trips over random
//! Unicode, GPT-2's merges against tiktoken, and the `kiln tokenizer` commands.

mod common;

use std::sync::LazyLock;

use common::{kiln, repo};
use kiln::tokenizer::bpe::pretokenize::{pre_tokens, GPT2_PATTERN};
use kiln::tokenizer::bpe::train::{train_on_text, BpeTrainOptions};
use kiln::tokenizer::{BpeTokenizer, TiktokenTokenizer, Tokenizer};
use proptest::prelude::*;

static GPT2_REGEX: LazyLock<fancy_regex::Regex> = LazyLock::new(|| fancy_regex::Regex::new(GPT2_PATTERN).unwrap());

static VERDICT_BPE: LazyLock<BpeTokenizer> = LazyLock::new(|| {
    let text = std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap();
    let options = BpeTrainOptions { vocab_size: 600, specials: vec!["<|endoftext|>".into(), "<pad>".into()], progress: false };
    train_on_text(&text, &options).unwrap()
});

/// Text built from pieces that stress the pattern: whitespace runs of every kind,
/// contractions, digits, letters from several scripts, specials and any char at all.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "'s", "'ll", "'S", "'", "123",
        "٣", "abc", "Ünï", "日本語", "😀", "!!", "<|endoftext|>", "<pad>", "<|endoftext", "x",
    ]);
    let piece = prop_oneof![3 => pieces.prop_map(String::from), 1 => any::<char>().prop_map(String::from)];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn pre_tokens_equal_the_lookahead_pattern(text in tricky_text()) {
        let expected: Vec<&str> = GPT2_REGEX.find_iter(&text).map(|m| m.unwrap().as_str()).collect();
        let ours: Vec<&str> = pre_tokens(&text).collect();
        prop_assert_eq!(ours, expected);
    }

    #[test]
    fn decode_inverts_encode(text in tricky_text()) {
        let tok = &*VERDICT_BPE;
        prop_assert_eq!(tok.decode(&tok.encode(&text).unwrap()), text);
    }

    #[test]
    fn decode_inverts_encode_on_arbitrary_strings(text in any::<String>()) {
        let tok = &*VERDICT_BPE;
        prop_assert_eq!(tok.decode_bytes(&tok.encode(&text).unwrap()), text.as_bytes());
    }
}

#[test]
fn specials_are_single_tokens() {
    let tok = &*VERDICT_BPE;
    let ids = tok.encode("a<pad><|endoftext|>b").unwrap();
    assert_eq!(ids[1..3], [257, 256]);
}

/// GPT-2's vocabulary run through kiln's encoder gives tiktoken's ids.
#[test]
fn gpt2_merges_reproduce_tiktoken() {
    let kiln_gpt2 = TiktokenTokenizer::gpt2_as_bpe().unwrap();
    let tiktoken = TiktokenTokenizer::new("gpt2").unwrap();
    for file in ["the-verdict.txt", "tinystories_val.txt"] {
        let text = std::fs::read_to_string(repo().join("data").join(file)).unwrap();
        assert_eq!(kiln_gpt2.encode(&text).unwrap(), tiktoken.encode(&text).unwrap(), "{file}");
    }
    let odd = "  leading\u{a0}nbsp\t\ttabs 12345 ½ 𝔘𝔫𝔦 'S 's😀😀\r\n\r\n  <|endoftext|>";
    assert_eq!(kiln_gpt2.encode(odd).unwrap(), tiktoken.encode(odd).unwrap());
}

#[test]
fn train_encode_decode_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("verdict.json");
    let out_s = out.to_str().unwrap();
    let (ok, _, err) = kiln(&[
        "tokenizer", "train", "--input", "data/the-verdict.txt", "--vocab-size", "500", "--special", "<|endoftext|>", "--out", out_s,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("vocabulary 500"), "{err}");
    let (ok, ids, err) = kiln(&["tokenizer", "encode", "--tokenizer", out_s, "--text", "Once upon a time<|endoftext|>"]);
    assert!(ok, "{err}");
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.last(), Some(&"256"));
    let mut args = vec!["tokenizer", "decode", "--tokenizer", out_s, "--ids"];
    args.extend(&ids);
    let (ok, text, err) = kiln(&args);
    assert!(ok, "{err}");
    assert_eq!(text, "Once upon a time<|endoftext|>");

    // A file streams through encode into u32 ids.
    let bin = dir.path().join("ids.bin");
    let (ok, _, err) = kiln(&["tokenizer", "encode", "--tokenizer", out_s, "--input", "data/the-verdict.txt", "--out", bin.to_str().unwrap()]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap();
    let loaded = kiln::tokenizer::load(&out).unwrap();
    let expected: Vec<u8> = loaded.encode(&text).unwrap().iter().flat_map(|id| id.to_le_bytes()).collect();
    assert_eq!(std::fs::read(&bin).unwrap(), expected);
}

#[test]
fn bad_tokenizer_inputs_get_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let out_s = out.to_str().unwrap();
    let (ok, _, err) = kiln(&["tokenizer", "train", "--input", "data/the-verdict.txt", "--vocab-size", "100", "--out", out_s]);
    assert!(!ok && err.contains("vocab size 100") && err.contains("256"), "{err}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) = kiln(&["tokenizer", "train", "--input", empty.to_str().unwrap(), "--vocab-size", "300", "--out", out_s]);
    assert!(!ok && err.contains("no text to train on") && err.contains("empty.txt"), "{err}");
    let (ok, _, err) = kiln(&["tokenizer", "train", "--input", "no/such.txt", "--vocab-size", "300", "--out", out_s]);
    assert!(!ok && err.contains("no/such.txt"), "{err}");
    let wordpiece = dir.path().join("wp.json");
    std::fs::write(&wordpiece, r#"{"model": {"type": "WordPiece", "vocab": {"a": 0}}}"#).unwrap();
    let (ok, _, err) = kiln(&["tokenizer", "encode", "--tokenizer", wordpiece.to_str().unwrap(), "--text", "a"]);
    assert!(!ok && err.contains("wp.json") && err.contains("WordPiece"), "{err}");
    let truncated = dir.path().join("cut.json");
    std::fs::write(&truncated, r#"{"model": {"type": "BPE", "vocab": {"#).unwrap();
    let (ok, _, err) = kiln(&["tokenizer", "encode", "--tokenizer", truncated.to_str().unwrap(), "--text", "a"]);
    assert!(!ok && err.contains("cut.json") && err.contains("not JSON"), "{err}");
}
