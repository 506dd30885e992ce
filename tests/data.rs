//! From text to batches: the word tokenizer, sliding windows and documents, checked against
//! the examples of Raschka's chapter 2, and the `tokenizer show` / `data show` commands.

mod common;

use common::{kiln, repo};
use kiln::config::TokenizerSpec;
use kiln::data::{WindowOrder, WindowStarts};
use kiln::tokenizer::{Tokenizer, WordTokenizer};

fn verdict() -> String {
    std::fs::read_to_string(repo().join("data/the-verdict.txt")).unwrap()
}

#[test]
fn word_tokenizer_reproduces_the_book() {
    let tok = WordTokenizer::fit(&verdict(), 1);
    assert_eq!(tok.vocab_size(), 1132, "1130 words of The Verdict + <|endoftext|> + <|unk|>");
    let text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids, [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]);
    assert_eq!(
        tok.decode(&ids),
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>."
    );

    let v1_example =
        "\"It's the last he painted, you know,\" Mrs. Gisburn said with pardonable pride.";
    let ids = tok.encode(v1_example).unwrap();
    assert_eq!(
        ids,
        [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108, 754, 793, 7]
    );
}

#[test]
fn sliding_windows_count_and_shift_like_the_book() {
    let gpt2 = kiln::tokenizer::build(
        &TokenizerSpec::parse("tiktoken:gpt2").unwrap(),
        "",
        Default::default(),
    )
    .unwrap();
    let tokens = gpt2.encode(&verdict()).unwrap();
    assert_eq!(tokens.len(), 5145);

    // max_length 4: stride 1 gives one window per position, stride 4 no overlap.
    let stride_1 = WindowStarts::new(&tokens, 4, 1, None);
    let stride_4 = WindowStarts::new(&tokens, 4, 4, None);
    assert_eq!(stride_1.len(), 5141);
    assert_eq!(stride_4.len(), 1286);
    assert_eq!((stride_1.get(1), stride_4.get(1)), (1, 4));
    let first = &tokens[stride_1.get(0)..stride_1.get(0) + 5];
    assert_eq!(first[..4], [40, 367, 2885, 1464], "inputs of the book's first batch");
    assert_eq!(first[1..], [367, 2885, 1464, 1807], "targets: the inputs shifted by one");

    // A pass visits every window exactly once, in a seeded order.
    let order = WindowOrder::Shuffled { starts: stride_4, seed: 123 };
    let mut pass = order.range(0, 1286);
    pass.sort_unstable();
    assert_eq!(pass, (0..1286).map(|i| 4 * i).collect::<Vec<_>>());
}

#[test]
fn respect_documents_never_crosses_a_separator() {
    let text = std::fs::read_to_string(repo().join("data/tinystories_val.txt")).unwrap();
    let gpt2 = kiln::tokenizer::build(
        &TokenizerSpec::parse("tiktoken:gpt2").unwrap(),
        "",
        Default::default(),
    )
    .unwrap();
    let eot = gpt2.special_id("<|endoftext|>").expect("gpt2 has <|endoftext|>");
    assert_eq!(eot, 50256);
    let tokens = gpt2.encode(&text).unwrap();
    let separators = tokens.iter().filter(|&&t| t == eot).count();
    assert_eq!(separators, 1000, "one separator per story");

    for (block, stride) in [(64, 64), (64, 1), (128, 32)] {
        let starts = WindowStarts::new(&tokens, block, stride, Some(eot));
        assert!(starts.len() > 100, "block {block} stride {stride}: only {} windows", starts.len());
        for i in 0..starts.len() {
            let window = &tokens[starts.get(i)..starts.get(i) + block + 1];
            // The separator may only be the last target: the model learns where a story ends.
            assert!(
                !window[..block].contains(&eot),
                "window {i} at {} crosses a document end",
                starts.get(i)
            );
        }
        let crossing = WindowStarts::new(&tokens, block, stride, None);
        assert!(crossing.len() > starts.len());
    }
}

#[test]
fn tokenizer_show_prints_pieces_ids_and_bytes() {
    let (ok, out, err) =
        kiln(&["tokenizer", "show", "--tokenizer", "tiktoken:gpt2", "--text", "Hello, world!"]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0], ["#", "id", "piece", "bytes"], "TSV when stdout is not a terminal");
    assert_eq!(rows[1], ["0", "15496", "Hello", "5"]);
    assert_eq!(rows[3], ["2", "995", " world", "6"]);
    assert!(err.contains("4 tokens for 13 bytes"), "{err}");

    let (ok, out, err) = kiln(&[
        "tokenizer", "show", "--config", "configs/verdict-word.toml", "--text",
        "I HAD always thought",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().nth(2).unwrap().split('\t').nth(2), Some("HAD"));

    let (ok, _, err) = kiln(&["tokenizer", "show", "--tokenizer", "word", "--text", "x"]);
    assert!(!ok && err.contains("pass --config"), "{err}");
}

#[test]
fn data_show_puts_each_input_next_to_its_shifted_target() {
    let (ok, out, err) =
        kiln(&["data", "show", "--config", "configs/verdict-word.toml", "--batches", "2"]);
    assert!(ok, "{err}");
    let rows: Vec<Vec<&str>> = out.lines().skip(1).map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2 * 8, "two batches of batch_size 8");
    for row in &rows {
        let input: Vec<&str> = row[3].split(' ').collect();
        let target: Vec<&str> = row[4].split(' ').collect();
        assert_eq!((input.len(), target.len()), (32, 32));
        assert_eq!(input[1..], target[..31], "target is the input shifted by one token");
        assert_eq!(
            row[2].parse::<usize>().unwrap() % 16,
            0,
            "sliding starts are multiples of the stride"
        );
    }

    let (ok, out, err) =
        kiln(&["data", "show", "--config", "configs/verdict-word.toml", "--stats"]);
    assert!(ok, "{err}");
    assert!(out.contains("bytes\t20479"), "{out}");
    assert!(out.contains("vocabulary\t1132"), "{out}");
    assert!(out.contains("windows per epoch\t"), "{out}");
}

#[test]
fn word_config_trains_and_generates() {
    let artifacts = tempfile::tempdir().unwrap();
    let dir = artifacts.path().to_str().unwrap();
    let (ok, sample, err) = kiln(&[
        "--config",
        "configs/verdict-word.toml",
        "--set",
        &format!("run.artifacts_dir={dir}"),
        "--set",
        "training.max_iters=100",
        "--set",
        "training.eval_interval=50",
        "--sample-tokens",
        "30",
    ]);
    assert!(ok, "{err}");
    assert!(
        sample.split_whitespace().count() >= 10,
        "a word-level sample after training: {sample:?}"
    );
    let run = artifacts.path().join("verdict-word");
    let tokenizer = std::fs::read_to_string(run.join("tokenizer.json")).unwrap();
    assert!(tokenizer.contains("\"kind\": \"word\""), "{tokenizer}");
    let (ok, out, err) = kiln(&[
        "generate",
        "--run",
        run.to_str().unwrap(),
        "--prompt",
        "I had always",
        "--max-new-tokens",
        "20",
    ]);
    assert!(ok, "{err}");
    assert!(out.starts_with("I had always "), "{out}");
    assert!(out.split_whitespace().count() >= 10, "{out}");
}
