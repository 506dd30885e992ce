//! The encoder-decoder: incremental decoding equals teacher forcing, padding changes nothing,
//! beam search of one is greedy, BLEU equals sacreBLEU's, and a small model trained from the
//! command line learns to translate number words.

mod common;

use burn::prelude::*;
use common::{config_error, kiln, python_with, repo, run_python};
use kiln::config::PositionKind;
use kiln::data::parallel::Specials;
use kiln::model::{Seq2Seq, Seq2SeqConfig};
use kiln::translate::bleu::{corpus_bleu, tokenize_13a, Smoothing};
use kiln::translate::{Decoding, Translator};

type B = burn::backend::NdArray<f32>;

const PAD: usize = 0;

fn model(norm_first: bool, positions: PositionKind) -> Seq2Seq<B> {
    B::seed(&Default::default(), 7);
    Seq2SeqConfig::new(50, 32, 4, 2, 2, 64, 16, PAD)
        .with_dropout(0.0)
        .with_norm_first(norm_first)
        .with_positions(positions)
        .init(&Default::default())
}

fn ints(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
    let width = rows[0].len();
    Tensor::from_data(TensorData::new(rows.concat(), [rows.len(), width]), &Default::default())
}

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{what}: differs by {worst}");
}

#[test]
fn decoding_step_by_step_through_the_cache_equals_teacher_forcing() {
    for (norm_first, positions) in
        [(false, PositionKind::Sinusoidal), (true, PositionKind::Learned)]
    {
        let model = model(norm_first, positions);
        let source = ints(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 0, 0]]);
        let target = ints(&[&[1, 11, 12, 13], &[1, 14, 15, 16]]);
        let full = model.forward(source.clone(), target.clone()); // [2, 4, 50]
        let mut state = model.start_decoding(model.encode(source));
        for t in 0..4 {
            let step = model.decode_step(target.clone().slice([0..2, t..t + 1]), &mut state);
            let want = full.clone().slice([0..2, t..t + 1, 0..50]).reshape([2, 50]);
            assert_close(
                &format!("norm_first {norm_first}, {positions:?}, position {t}"),
                &values(step),
                &values(want),
            );
        }
        assert_eq!(state.len(), 4);
    }
}

#[test]
fn padding_a_source_changes_nothing() {
    let model = model(false, PositionKind::Sinusoidal);
    let alone = model.forward(ints(&[&[9, 10, 2]]), ints(&[&[1, 14, 15]]));
    let batched = model
        .forward(ints(&[&[5, 6, 7, 8, 2], &[9, 10, 2, 0, 0]]), ints(&[&[1, 11, 12], &[1, 14, 15]]));
    let second = batched.slice([1..2, 0..3, 0..50]);
    assert_close("padded source", &values(second), &values(alone));
}

#[test]
fn beam_search_of_one_is_greedy_decoding() {
    let model = model(true, PositionKind::Sinusoidal);
    let specials = Specials { pad: PAD as u32, bos: 1, eos: 2 };
    let sources: Vec<Vec<u32>> = vec![vec![5, 6, 7, 2], vec![9, 2], vec![11, 12, 13, 14, 15, 2]];
    let sources: Vec<&[u32]> = sources.iter().map(Vec::as_slice).collect();
    let decoding =
        Decoding { beam: 1, length_penalty: 0.0, max_len_ratio: 1.5, max_len: 16, batch_size: 8 };
    let device = Default::default();
    let translator = Translator { model: &model, specials, device: &device };
    let greedy_out = translator.greedy(&sources, &decoding);
    assert_eq!(translator.beam_search(&sources, &decoding), greedy_out);
    assert!(greedy_out.iter().all(|out| out.len() <= 15 && !out.contains(&2)), "{greedy_out:?}");
    let wide = translator.beam_search(&sources, &Decoding { beam: 4, ..decoding });
    assert_eq!(wide.len(), 3);
}

/// Hypotheses that match their references fully, partly, in another order, in another case,
/// or not at all, with 13a's punctuation, numbers and entities.
fn bleu_cases() -> (Vec<String>, Vec<String>) {
    let references = kiln::data::parallel::read_lines(
        "test",
        &repo().join("data/multi30k/test_2016_flickr.en.gz"),
    )
    .unwrap();
    let references: Vec<String> = references.into_iter().take(200).collect();
    let hypotheses = references
        .iter()
        .enumerate()
        .map(|(i, r)| match i % 6 {
            0 => r.clone(),
            1 => r.split(' ').skip(1).collect::<Vec<_>>().join(" "),
            2 => r.split(' ').rev().collect::<Vec<_>>().join(" "),
            3 => r.to_lowercase().replace('.', " ."),
            4 => format!("{r} &amp; 3.5-4, \"yes\"!"),
            _ => "a dog".into(),
        })
        .collect();
    (hypotheses, references)
}

#[test]
fn bleu_equals_sacrebleu() {
    let python = python_with("sacrebleu");
    let dir = tempfile::tempdir().unwrap();
    let (hypotheses, references) = bleu_cases();
    // One corpus whose 4-gram precision is zero, where exp smoothing makes a difference.
    let short: (Vec<String>, Vec<String>) = (
        vec!["the dog runs home".into(), "a cat".into()],
        vec!["the dog runs to the house".into(), "a cat sleeps".into()],
    );
    for (name, (hyps, refs)) in [("corpus", (hypotheses, references)), ("no 4-gram matches", short)]
    {
        let (hyp_path, ref_path) = (dir.path().join("hyp.txt"), dir.path().join("ref.txt"));
        std::fs::write(&hyp_path, hyps.iter().map(|l| format!("{l}\n")).collect::<String>())
            .unwrap();
        std::fs::write(&ref_path, refs.iter().map(|l| format!("{l}\n")).collect::<String>())
            .unwrap();
        let report = run_python(
            &python,
            "sacrebleu_check.py",
            &[hyp_path.to_str().unwrap(), ref_path.to_str().unwrap()],
        );
        let want: serde_json::Value = serde_json::from_str(report.trim()).unwrap();
        for (method, smoothing) in [("exp", Smoothing::Exp), ("none", Smoothing::None)] {
            let got = corpus_bleu(&hyps, &refs, smoothing).score;
            let want = want[method].as_f64().unwrap();
            eprintln!("{name}, smoothing {method}: kiln {got:.4}, sacrebleu {want:.4}");
            assert!(
                (got - want).abs() <= 0.01,
                "{name}, smoothing {method}: kiln {got} vs sacrebleu {want}"
            );
        }
    }
    assert_eq!(
        tokenize_13a("A man (aged 30) said: \"hi\"."),
        "A man ( aged 30 ) said : \" hi \" ."
    );
}

const NUMBERS: [(&str, &str); 8] = [
    ("eins", "one"),
    ("zwei", "two"),
    ("drei", "three"),
    ("vier", "four"),
    ("fünf", "five"),
    ("sechs", "six"),
    ("sieben", "seven"),
    ("acht", "eight"),
];

/// `count` sentences of 2 to 5 German number words and their English words, from `seed`.
fn number_pairs(count: usize, seed: u64) -> (String, String) {
    let mut state = seed;
    let mut next = |n: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % n) as usize
    };
    let (mut de, mut en) = (String::new(), String::new());
    for _ in 0..count {
        let words: Vec<usize> = (0..2 + next(4)).map(|_| next(NUMBERS.len() as u64)).collect();
        de += &(words.iter().map(|&w| NUMBERS[w].0).collect::<Vec<_>>().join(" ") + "\n");
        en += &(words.iter().map(|&w| NUMBERS[w].1).collect::<Vec<_>>().join(" ") + "\n");
    }
    (de, en)
}

#[test]
fn a_small_model_learns_to_translate_number_words_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (split, count, seed) in [("train", 2000, 1), ("valid", 64, 2), ("test", 100, 3)] {
        let (de, en) = number_pairs(count, seed);
        std::fs::write(d.join(format!("{split}.de")), de).unwrap();
        std::fs::write(d.join(format!("{split}.en")), en).unwrap();
    }
    let config = d.join("numbers.toml");
    let text = std::fs::read_to_string(repo().join("configs/multi30k-cpu.toml")).unwrap();
    std::fs::write(&config, text).unwrap();
    let p = |name: &str| format!("{}", d.join(name).display());
    let sets = [
        "run.name=numbers".into(),
        format!("run.artifacts_dir={}", p("artifacts")),
        format!("data.source={}", p("train.de")),
        format!("data.target={}", p("train.en")),
        format!("data.valid_source={}", p("valid.de")),
        format!("data.valid_target={}", p("valid.en")),
        format!("data.test_source={}", p("test.de")),
        format!("data.test_target={}", p("test.en")),
        "data.tokenizer=bpe:train:320".into(),
        "model.d_model=32".into(),
        "model.n_heads=2".into(),
        "model.n_layers=1".into(),
        "model.n_decoder_layers=1".into(),
        "model.d_ff=64".into(),
        "model.block_size=24".into(),
        "model.dropout=0.0".into(),
        "training.batch_size=32".into(),
        "training.max_iters=300".into(),
        "training.learning_rate=3e-3".into(),
        "training.warmup_iters=20".into(),
        "training.eval_interval=150".into(),
        "training.eval_iters=2".into(),
        "backend.name=ndarray".into(),
    ];
    let mut args: Vec<String> =
        vec!["train".into(), "--config".into(), config.display().to_string()];
    for set in &sets {
        args.extend(["--set".into(), set.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, stderr) = kiln(&args);
    assert!(ok, "training failed:\n{stderr}");
    let run = p("artifacts/numbers");
    for file in ["config.toml", "tokenizer.json", "model.mpk", "metrics.jsonl", "summary.json"] {
        assert!(d.join("artifacts/numbers").join(file).is_file(), "{file} missing:\n{stderr}");
    }

    let (ok, stdout, stderr) =
        kiln(&["eval", "--run", &run, "--split", "test", "--beam", "3", "--json"]);
    assert!(ok, "eval failed:\n{stderr}");
    let eval: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    eprintln!("{stdout}");
    assert!(eval["bleu_greedy"].as_f64().unwrap() > 80.0, "{stdout}");
    assert!(eval["bleu_beam"].as_f64().unwrap() > 80.0, "{stdout}");
    assert!(eval["loss"].as_f64().unwrap() < 0.5, "{stdout}");

    let (ok, stdout, stderr) = kiln(&["translate", "--run", &run, "drei eins vier", "acht zwei"]);
    assert!(ok, "translate failed:\n{stderr}");
    assert_eq!(stdout, "three one four\neight two\n");
    let input = d.join("input.de");
    std::fs::write(&input, "sieben fünf\n").unwrap();
    let (ok, stdout, _) =
        kiln(&["translate", "--run", &run, "--input", input.to_str().unwrap(), "--beam", "1"]);
    assert!(ok && stdout == "seven five\n", "{stdout}");

    // The run continues from its last checkpoint with a longer schedule.
    let mut resume = args.clone();
    resume.extend(["--resume", "--set", "training.max_iters=330"]);
    let (ok, _, stderr) = kiln(&resume);
    assert!(
        ok && stderr.contains("resuming") && stderr.contains("from the checkpoint at step 300"),
        "resume failed:\n{stderr}"
    );
    let metrics = std::fs::read_to_string(d.join("artifacts/numbers/metrics.jsonl")).unwrap();
    assert!(metrics.lines().last().unwrap().contains("\"step\":330"), "{metrics}");

    let (ok, _, stderr) = kiln(&["translate", "--run", &run, "--beam", "0", "eins"]);
    assert!(!ok && stderr.contains("--beam 0"), "{stderr}");
    let (ok, _, stderr) = kiln(&["inspect", &run]);
    assert!(ok, "inspect failed:\n{stderr}");
}

#[test]
fn parallel_config_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(repo().join("configs/multi30k-cpu.toml")).unwrap();
    let err = config_error(dir.path(), &base.replace("kind = \"seq2seq\"", "kind = \"gpt\""));
    assert!(err.contains("model.kind") && err.contains("parallel"), "{err}");
    let err = config_error(
        dir.path(),
        &base.replace("tokenizer = \"bpe:train:8000\"", "tokenizer = \"char\""),
    );
    assert!(err.contains("data.tokenizer") && err.contains("<pad>"), "{err}");
    let err =
        config_error(dir.path(), &base.replace("valid_target = \"data/multi30k/val.en.gz\"\n", ""));
    assert!(err.contains("data.valid_target"), "{err}");
    let err =
        config_error(dir.path(), &base.replace("[model]\n", "[model]\npositions = \"rope\"\n"));
    assert!(err.contains("model.positions"), "{err}");
    let err =
        config_error(dir.path(), &base.replace("schedule = \"cosine\"", "schedule = \"linear\""));
    assert!(err.contains("cosine, noam"), "{err}");
    let err = config_error(
        dir.path(),
        &base.replace("data/multi30k/train.de.gz", "data/multi30k/nope.de.gz"),
    );
    assert!(err.contains("data.source") && err.contains("nope.de.gz"), "{err}");
}

#[test]
fn misaligned_files_are_named_with_their_line_counts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.de"), "eins\nzwei\n").unwrap();
    std::fs::write(dir.path().join("a.en"), "one\n").unwrap();
    let files =
        [("data.source", dir.path().join("a.de")), ("data.target", dir.path().join("a.en"))];
    let err = kiln::data::parallel::read_pairs([
        (files[0].0, files[0].1.as_path()),
        (files[1].0, files[1].1.as_path()),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("data.source")
            && err.contains("2 lines")
            && err.contains("data.target")
            && err.contains("has 1"),
        "{err}"
    );
}
