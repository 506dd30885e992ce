//! Config loading, layering and every validation message.

mod common;

use common::{config_error, repo, valid_config_text};

#[test]
fn layers_file_then_environment_then_set() {
    let file = repo().join("configs/tiny.toml");
    let env = vec![
        ("KILN_TRAINING__LEARNING_RATE".to_string(), "0.002".to_string()),
        ("KILN_TRAINING__BATCH_SIZE".to_string(), "4".to_string()),
        // Not settings: the set-up script's own variables must not make the config fail.
        ("KILN_VENV".to_string(), "/opt/venv".to_string()),
        ("KILN_TORCH_VERSION".to_string(), "2.9.0".to_string()),
    ];
    let sets = vec!["training.learning_rate=3e-4".to_string(), "run.name=lr3e4".to_string()];
    let spec = kiln::config::load_with_env(&file, &sets, env).unwrap();
    assert_eq!(spec.training.batch_size, 4, "environment overrides the file");
    assert_eq!(spec.training.learning_rate, 3e-4, "--set overrides the environment");
    assert_eq!(spec.run.name, "lr3e4");
    assert_eq!(spec.model.d_model(), 32, "the file is the base");
}

#[test]
fn every_shipped_config_loads() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("configs")).unwrap() {
        let path = entry.unwrap().path();
        let spec = match kiln::config::load_with_env(&path, &[], Vec::new()) {
            Ok(spec) => spec,
            // A config for libtorch in a build without it: everything else must still hold.
            Err(e) if e.to_string().contains("--features") => {
                kiln::config::load_with_env(&path, &["backend.name=ndarray".into()], Vec::new())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            }
            Err(e) => panic!("{}: {e}", path.display()),
        };
        assert_eq!(
            Some(spec.run.name.as_str()),
            path.file_stem().and_then(|s| s.to_str()),
            "{}: run.name",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} configs found");
}

#[test]
fn gpt2_124m_has_the_books_parameter_counts() {
    // Raschka ch. 4: 163,009,536 with its own output head, 124,412,160 with it tied.
    let (ok, out, err) = common::kiln(&["inspect", "configs/gpt2-124m.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("total parameters:    163,009,536 (124,412,160 with the output head tied"),
        "{out}"
    );
    let (ok, out, err) =
        common::kiln(&["inspect", "configs/gpt2-124m.toml", "--set", "model.tie_embeddings=true"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("total parameters:    124,412,160 (163,009,536 with an untied output head)"),
        "{out}"
    );
}

#[test]
fn course_architecture_keys_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let with = |extra: &str| {
        config_error(
            dir.path(),
            &valid_config_text().replace("[model]\n", &format!("[model]\n{extra}\n")),
        )
    };
    let err = with("positions = \"alibi\"");
    assert!(err.contains("alibi") && err.contains("learned") && err.contains("rope"), "{err}");
    let err = with("norm = \"batchnorm\"");
    assert!(err.contains("batchnorm") && err.contains("rmsnorm"), "{err}");
    let err = with("activation = \"tanh\"");
    assert!(err.contains("tanh") && err.contains("swiglu"), "{err}");
    let err = with("init = \"xavier\"");
    assert!(
        err.contains("xavier") && err.contains("gpt2, torch") && err.contains("model.init"),
        "{err}"
    );
    let err = with("positions = \"rope\"\nrope_theta = 0.5");
    assert!(err.contains("model.rope_theta = 0.5"), "{err}");
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_config_text().replace("d_model = 32", "d_model = 32\nd_modle = 3");
    let err = config_error(dir.path(), &text);
    assert!(err.contains("d_modle") && err.contains("bad.toml"), "{err}");
}

#[test]
fn wrong_type_names_key_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        config_error(dir.path(), &valid_config_text().replace("d_model = 32", "d_model = \"big\""));
    assert!(err.contains("model.d_model") && err.contains("big"), "{err}");
}

#[test]
fn heads_must_divide_d_model() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_error(dir.path(), &valid_config_text().replace("n_heads = 2", "n_heads = 3"));
    assert_eq!(err, "model.n_heads = 3: expected a divisor of model.d_model (32)");
}

#[test]
fn block_size_zero_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        config_error(dir.path(), &valid_config_text().replace("block_size = 32", "block_size = 0"));
    assert_eq!(err, "model.block_size = 0: expected a positive integer up to 1048576");
}

#[test]
fn val_fraction_must_be_inside_zero_one() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0.0", "1.0", "1.5"] {
        let err = config_error(
            dir.path(),
            &valid_config_text().replace("val_fraction = 0.1", &format!("val_fraction = {bad}")),
        );
        assert!(
            err.starts_with("data.val_fraction = ") && err.contains("expected a number in (0, 1)"),
            "{err}"
        );
    }
}

#[test]
fn missing_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = valid_config_text().replace("tinyshakespeare.txt", "no-such-corpus.txt");
    let err = config_error(dir.path(), &text);
    assert!(err.starts_with("data.path = "), "{err}");
    common::assert_mentions(&err, &["no-such-corpus.txt", "existing text file"]);
}

#[test]
fn unknown_tokenizer_and_backend_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = config_error(
        dir.path(),
        &valid_config_text().replace("tokenizer = \"char\"", "tokenizer = \"words\""),
    );
    assert!(err.starts_with("data.tokenizer = \"words\"") && err.contains("tiktoken:"), "{err}");
    let err =
        config_error(dir.path(), &format!("{}\n[backend]\nname = \"tpu\"\n", valid_config_text()));
    assert!(err.starts_with("backend.name = \"tpu\"") && err.contains("ndarray"), "{err}");
}

#[test]
fn bad_override_says_the_expected_form() {
    let err = kiln::config::load_with_env(
        &repo().join("configs/tiny.toml"),
        &["learning_rate".into()],
        Vec::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("section.key=value"), "{err}");
}

#[test]
fn corpus_shorter_than_a_block_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("short.txt");
    std::fs::write(&corpus, "to be or not to be").unwrap();
    let mut spec = common::tiny_spec(dir.path(), &[]);
    spec.data.path = corpus;
    let err = format!("{:#}", kiln::train::train(spec, Default::default()).unwrap_err());
    common::assert_mentions(&err, &["short.txt", "model.block_size = 32", "needs at least 33"]);
}

#[test]
fn backend_not_compiled_in_names_the_feature_to_build_with() {
    let dir = tempfile::tempdir().unwrap();
    let (name, feature) = [("wgpu", "wgpu"), ("tch-cpu", "tch"), ("cuda", "cuda")]
        .into_iter()
        .find(|(name, _)| {
            !kiln::config::BackendName::try_from(name.to_string()).is_ok_and(|b| b.compiled_in())
        })
        .expect("this test runs in builds without the cuda feature");
    let err = config_error(
        dir.path(),
        &format!("{}\n[backend]\nname = \"{name}\"\n", valid_config_text()),
    );
    assert!(err.contains(&format!("--features {feature}")), "{err}");
}

#[test]
fn bad_distributed_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |section: &str| {
        config_error(dir.path(), &format!("{}\n[distributed]\n{section}\n", valid_config_text()))
    };
    let err = with("devices = [0, 1, 0]");
    assert!(err.contains("distributed.devices") && err.contains("0 is listed twice"), "{err}");
    // The keys of kiln's former link between machines name what replaced them.
    for key in ["nodes = 2", "node_rank = 1", "coordinator = \"10.0.0.1:3000\""] {
        let err = with(key);
        let name = key.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("distributed.{name}")) && err.contains("MPI launcher"),
            "{err}"
        );
    }
    // A run written before reads back: its config.toml has the former keys at their defaults.
    let resolved = dir.path().join("config.toml");
    let text = format!(
        "{}\n[distributed]\nnodes = 1\nnode_rank = 0\ncoordinator = \"\"\n",
        valid_config_text()
    );
    std::fs::write(&resolved, text).unwrap();
    kiln::config::RunSpec::read_resolved(&resolved).expect("an older run's config.toml reads");
    if !cfg!(feature = "distributed") {
        let err = with("devices = [0, 1]");
        assert!(err.contains("built without the `distributed` feature"), "{err}");
    }
    let err = with("node_address = \"10.0.0.1:3001\"");
    assert!(err.contains("node_address"), "{err}");
}

#[test]
fn each_model_kind_has_its_own_defaults() {
    let seq2seq =
        kiln::config::load_with_env(&repo().join("configs/multi30k.toml"), &[], Vec::new())
            .unwrap();
    let kiln::config::ModelSpec::Seq2Seq(m) = &seq2seq.model else {
        panic!("multi30k.toml is a seq2seq config");
    };
    assert!(!m.norm_first && m.dropout == 0.1 && m.n_decoder_layers() == 3);
    assert_eq!(m.activation, kiln::config::Activation::Relu);
    assert_eq!(m.positions, kiln::config::PositionKind::Sinusoidal);
    assert_eq!(m.init, kiln::config::InitScheme::Torch);
    let gpt =
        kiln::config::load_with_env(&repo().join("configs/tiny.toml"), &[], Vec::new()).unwrap();
    let kiln::config::ModelSpec::Gpt(m) = &gpt.model else {
        panic!("tiny.toml is a GPT config");
    };
    assert!(m.norm_first && m.dropout == 0.0);
    assert_eq!(m.init, kiln::config::InitScheme::Gpt2);
    // A key of the other kind is not a key of this one.
    let dir = tempfile::tempdir().unwrap();
    let err = config_error(
        dir.path(),
        &valid_config_text().replace("[model]\n", "[model]\nn_decoder_layers = 2\n"),
    );
    assert!(err.contains("model") && err.contains("n_decoder_layers"), "{err}");
}

#[test]
fn values_of_the_wrong_type_are_refused_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for (from, to, key) in [
        ("batch_size = 16", "batch_size = 1.5", "training.batch_size"),
        ("learning_rate = 3e-3", "learning_rate = \"0.003\"", "training.learning_rate"),
        ("n_heads = 2", "n_heads = true", "model.n_heads"),
        ("seed = 1337", "seed = -1", "run.seed"),
    ] {
        let text = valid_config_text();
        assert!(text.contains(from), "tiny.toml has {from}");
        let err = config_error(dir.path(), &text.replace(from, to));
        assert!(err.contains(key) && err.contains("bad.toml"), "{to}: {err}");
    }
    // The same through the environment and overrides, which name where the value came from.
    let file = repo().join("configs/tiny.toml");
    let env = vec![("KILN_TRAINING__BATCH_SIZE".to_string(), "1.5".to_string())];
    let err = kiln::config::load_with_env(&file, &[], env).unwrap_err().to_string();
    assert!(
        err.contains("KILN_TRAINING__BATCH_SIZE") && err.contains("training.batch_size"),
        "{err}"
    );
    let sets = ["training.eval_iters=true".to_string()];
    let err = kiln::config::load_with_env(&file, &sets, Vec::new()).unwrap_err().to_string();
    assert!(
        err.contains("training.eval_iters=true") && err.contains("training.eval_iters"),
        "{err}"
    );
    // A bare value where a string belongs is that string.
    let sets = ["run.name=123".to_string()];
    let spec = kiln::config::load_with_env(&file, &sets, Vec::new()).unwrap();
    assert_eq!(spec.run.name, "123");
}

/// docs/config.md names every key a config can hold: every key `config.toml` writes for a GPT
/// and for a seq2seq preset (the resolved config holds every key with its default).
#[test]
fn the_config_reference_names_every_key() {
    let reference = std::fs::read_to_string(repo().join("docs/config.md")).unwrap();
    let mut missing = Vec::new();
    for preset in ["tiny", "multi30k-cpu"] {
        let preset = kiln::config::Preset::find(preset).unwrap();
        let spec = kiln::config::RunSpec::from_toml(preset.text, preset.name).unwrap();
        let table: toml::Table = spec.to_toml().parse().unwrap();
        for (section, keys) in &table {
            for key in keys.as_table().unwrap().keys() {
                let name = format!("`{section}.{key}`");
                if !reference.contains(&name) && !missing.contains(&name) {
                    missing.push(name);
                }
            }
        }
    }
    assert!(missing.is_empty(), "docs/config.md does not describe {missing:?}");
}
