//! Byte-level BPE: the pre-tokenizer against the GPT-2 pattern, round trips over random
//! Unicode, GPT-2's merges against tiktoken, and the `kiln tokenizer` commands.

mod common;

use std::path::Path;
use std::sync::LazyLock;

use common::{kiln, python_with, repo, run_python};
use kiln::tokenizer::bpe::pretokenize::{chunks, pre_tokens, GPT2_PATTERN};
use kiln::tokenizer::bpe::train::{train_on_text, BpeTrainOptions};
use kiln::tokenizer::{BpeTokenizer, TiktokenTokenizer, Tokenizer};
use proptest::prelude::*;

static GPT2_REGEX: LazyLock<fancy_regex::Regex> =
    LazyLock::new(|| fancy_regex::Regex::new(GPT2_PATTERN).unwrap());

static VERDICT_BPE: LazyLock<BpeTokenizer> = LazyLock::new(|| {
    let text = std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap();
    let options = BpeTrainOptions {
        vocab_size: 600,
        specials: vec!["<|endoftext|>".into(), "<pad>".into()],
        progress: false,
    };
    train_on_text(&text, &options).unwrap()
});

/// Text built from pieces that stress the pattern: whitespace runs of every kind,
/// contractions, digits, letters from several scripts, specials and any char at all.
fn tricky_text() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "'s", "'ll", "'S",
        "'", "123", "٣", "abc", "Ünï", "\nA", "a\n", ".\n\nB", " \nx", "日本語", "😀", "!!",
        "<|endoftext|>", "<pad>", "<|endoftext", "x",
    ]);
    let piece =
        prop_oneof![3 => pieces.prop_map(String::from), 1 => any::<char>().prop_map(String::from)];
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
    fn cutting_into_chunks_keeps_the_pieces(text in tricky_text(), target in 1usize..30) {
        let whole: Vec<&str> = pre_tokens(&text).collect();
        let chunked: Vec<&str> = chunks(&text, target).into_iter().flat_map(pre_tokens).collect();
        prop_assert_eq!(chunked, whole);
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
    // tinyshakespeare is over the 1 MB at which encoding goes parallel.
    for file in ["the-verdict.txt", "tinystories_val.txt", "tinyshakespeare.txt"] {
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
        "tokenizer", "train", "--input", "data/the-verdict.txt", "--vocab-size", "500",
        "--special", "<|endoftext|>", "--out", out_s,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("vocabulary 500"), "{err}");
    let (ok, ids, err) = kiln(&[
        "tokenizer", "encode", "--tokenizer", out_s, "--text", "Once upon a time<|endoftext|>",
    ]);
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
    let (ok, _, err) = kiln(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        out_s,
        "--input",
        "data/the-verdict.txt",
        "--out",
        bin.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap();
    let loaded = kiln::tokenizer::load(&out).unwrap();
    let expected: Vec<u8> =
        loaded.encode(&text).unwrap().iter().flat_map(|id| id.to_le_bytes()).collect();
    assert_eq!(std::fs::read(&bin).unwrap(), expected);
}

#[test]
fn bad_tokenizer_inputs_get_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let out_s = out.to_str().unwrap();
    let (ok, _, err) = kiln(&[
        "tokenizer", "train", "--input", "data/the-verdict.txt", "--vocab-size", "100", "--out",
        out_s,
    ]);
    assert!(!ok && err.contains("vocab size 100") && err.contains("256"), "{err}");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, err) = kiln(&[
        "tokenizer",
        "train",
        "--input",
        empty.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out_s,
    ]);
    assert!(!ok && err.contains("no text to train on") && err.contains("empty.txt"), "{err}");
    let (ok, _, err) = kiln(&[
        "tokenizer", "train", "--input", "no/such.txt", "--vocab-size", "300", "--out", out_s,
    ]);
    assert!(!ok && err.contains("no/such.txt"), "{err}");
    let unknown = dir.path().join("mystery.json");
    std::fs::write(&unknown, r#"{"model": {"type": "Mystery", "vocab": {"a": 0}}}"#).unwrap();
    let (ok, _, err) =
        kiln(&["tokenizer", "encode", "--tokenizer", unknown.to_str().unwrap(), "--text", "a"]);
    assert!(!ok && err.contains("mystery.json") && err.contains("Mystery"), "{err}");
    let truncated = dir.path().join("cut.json");
    std::fs::write(&truncated, r#"{"model": {"type": "BPE", "vocab": {"#).unwrap();
    let (ok, _, err) =
        kiln(&["tokenizer", "encode", "--tokenizer", truncated.to_str().unwrap(), "--text", "a"]);
    assert!(!ok && err.contains("cut.json") && err.contains("not JSON"), "{err}");
}

/// Texts for the interop checks: prose, whitespace runs, Unicode, specials, numbers.
fn interop_texts() -> Vec<String> {
    let verdict = std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap();
    let mut texts: Vec<String> = [
        "Once upon a time",
        "  two leading spaces, trailing   ",
        "tabs\tand\r\nCRLF\n\n\nthree newlines",
        "I'll say it's 'THEIR' dog's 1234567 bones.",
        "Ünïcødé: 日本語のテキスト, emoji 😀👍🏽, Ελληνικά, עברית",
        "nbsp\u{a0}here and ideographic\u{3000}space",
        "<|endoftext|>story one<|endoftext|><|endoftext|> story two",
        "",
    ]
    .map(String::from)
    .into();
    texts.extend(verdict.lines().filter(|l| !l.is_empty()).take(40).map(String::from));
    texts.push(verdict[..3000].to_string());
    texts
}

/// Python's `tokenizers` loads what kiln writes and encodes every text to kiln's ids.
#[test]
fn hugging_face_reads_kiln_tokenizers() {
    let python = python_with("tokenizers");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    kiln::tokenizer::save(&*VERDICT_BPE, &path).unwrap();
    let cases: Vec<serde_json::Value> = interop_texts()
        .into_iter()
        .map(|text| serde_json::json!({"ids": VERDICT_BPE.encode(&text).unwrap(), "text": text}))
        .collect();
    let cases_path = dir.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).unwrap()).unwrap();
    let report = run_python(
        &python,
        "hf_tokenizers.py",
        &["check", path.to_str().unwrap(), cases_path.to_str().unwrap()],
    );
    assert!(report.contains(&format!("{0}/{0} texts", cases.len())), "{report}");
}

/// kiln loads a tokenizer.json that Hugging Face's BpeTrainer wrote and encodes like it.
#[test]
fn kiln_reads_hugging_face_tokenizers() {
    let python = python_with("tokenizers");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.json");
    let texts = interop_texts();
    let texts_path = dir.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    let corpus = repo().join("data/the-verdict.txt");
    let stdout = run_python(
        &python,
        "hf_tokenizers.py",
        &[
            "train",
            corpus.to_str().unwrap(),
            "700",
            path.to_str().unwrap(),
            texts_path.to_str().unwrap(),
        ],
    );
    let hf_ids: Vec<Vec<u32>> = serde_json::from_str(stdout.trim()).unwrap();
    let tok = kiln::tokenizer::load(&path).unwrap();
    assert_eq!(tok.vocab_size(), 700);
    for (text, ids) in texts.iter().zip(&hf_ids) {
        assert_eq!(&tok.encode(text).unwrap(), ids, "{text:?}");
        assert_eq!(&tok.decode(ids), text);
    }
}

/// `tokenizer = "bpe:train:N"` trains on the run's corpus and saves a Hugging Face file in
/// the run; a saved file is used as `bpe:PATH`, and generate decodes with it.
#[test]
fn configs_train_or_load_a_bpe() {
    use kiln::train::{train, TrainOptions};
    let artifacts = tempfile::tempdir().unwrap();
    let sets = [
        "data.path=data/the-verdict.txt", "data.tokenizer=bpe:train:300", "training.max_iters=20",
        "training.eval_interval=10",
    ];
    let summary = train(common::tiny_spec(artifacts.path(), &sets), TrainOptions::default())
        .unwrap()
        .summary()
        .unwrap();
    assert!(summary.final_val_loss < (300f64).ln(), "{}", summary.final_val_loss);
    let saved = artifacts.path().join("tiny/tokenizer.json");
    let tok = kiln::tokenizer::load(&saved).unwrap();
    assert_eq!((tok.vocab_size(), tok.special_id("<|endoftext|>")), (300, Some(256)));

    let run = train_and_sample(artifacts.path(), "loaded", &saved);
    let copied = std::fs::read(run.join("tokenizer.json")).unwrap();
    assert_eq!(copied, std::fs::read(&saved).unwrap());
}

/// Trains 10 steps on The Verdict into `artifacts/<name>` with the tokenizer file
/// `tokenizer`, and checks that `kiln generate` continues a prompt with it.
fn train_and_sample(artifacts: &Path, name: &str, tokenizer: &Path) -> std::path::PathBuf {
    use kiln::train::{train, TrainOptions};
    let (spec, run_name) =
        (format!("data.tokenizer=bpe:{}", tokenizer.display()), format!("run.name={name}"));
    let sets = [
        spec.as_str(),
        run_name.as_str(),
        "data.path=data/the-verdict.txt",
        "training.max_iters=10",
        "training.eval_interval=10",
    ];
    train(common::tiny_spec(artifacts, &sets), TrainOptions::default()).unwrap();
    let run = artifacts.join(name);
    let (ok, text, err) = kiln(&[
        "generate",
        "--run",
        run.to_str().unwrap(),
        "--prompt",
        "I had",
        "--max-new-tokens",
        "20",
        "--seed",
        "1",
    ]);
    assert!(ok && text.starts_with("I had") && text.trim().len() > "I had".len(), "{err}");
    run
}

/// Tokenizers of the pipelines kiln's own reader does not cover (GPT-4's regex split,
/// Llama-2's SentencePiece BPE with byte fallback, BERT's WordPiece, T5's Unigram), trained
/// by Python's `tokenizers`, load in kiln and encode and decode as they do there; streamed
/// token by token, the decoding is the same text; a run trains and samples with one.
#[test]
fn kiln_reads_any_hugging_face_tokenizer() {
    let python = python_with("tokenizers");
    let dir = tempfile::tempdir().unwrap();
    let texts = interop_texts();
    let texts_path = dir.path().join("texts.json");
    std::fs::write(&texts_path, serde_json::to_vec(&texts).unwrap()).unwrap();
    let corpus = repo().join("data/the-verdict.txt");
    let args =
        [corpus.to_str().unwrap(), dir.path().to_str().unwrap(), texts_path.to_str().unwrap()];
    let stdout = run_python(&python, "hf_tokenizers.py", &[&["styles"][..], &args].concat());
    let report: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report.len(), 4);
    for (style, cases) in &report {
        let path = dir.path().join(format!("{style}.json"));
        let tok = kiln::tokenizer::load(&path).unwrap_or_else(|e| panic!("{style}: {e}"));
        for (text, case) in texts.iter().zip(cases) {
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(text).unwrap(), ids, "{style}: {text:?}");
            let decoded = case["text"].as_str().unwrap();
            assert_eq!(tok.decode(&ids), decoded, "{style}: {text:?}");
            let mut decode = tok.stream_decoder(&[]);
            let streamed: Vec<u8> = ids.iter().flat_map(|&id| decode(id)).collect();
            assert_eq!(String::from_utf8_lossy(&streamed), decoded, "{style}: streamed");
        }
    }

    let t5 = dir.path().join("t5.json");
    let (ok, out, err) =
        kiln(&["tokenizer", "show", "--tokenizer", t5.to_str().unwrap(), "--text", "Once upon"]);
    assert!(ok && out.contains("▁up"), "{out}{err}");

    let artifacts = tempfile::tempdir().unwrap();
    train_and_sample(artifacts.path(), "llama", &dir.path().join("llama.json"));
}
