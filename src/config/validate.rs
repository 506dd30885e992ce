//! Value checks that serde cannot express. Every failure names the key, the value and what
//! was expected.

use super::{
    BackendSection, ConfigError, DataKind, DataSection, GptSpec, ModelSpec, PositionKind, RunSpec,
    Split,
};

fn invalid(key: &'static str, value: impl ToString, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), expected: expected.into() }
}

fn positive(key: &'static str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid(key, value, "a positive integer"));
    }
    Ok(())
}

/// A count in `1..=max`. The upper bounds sit far above any model or run that trains on
/// one machine; they exist so that no count reaches an allocation (or an overflowing
/// product of counts) before the memory preflight has priced it.
fn count(key: &'static str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value == 0 || value > max {
        return Err(invalid(key, value, format!("a positive integer up to {max}")));
    }
    Ok(())
}

/// Upper bounds of the model's sizes and the run's counts.
pub mod limits {
    pub const WIDTH: usize = 1 << 17;
    pub const HEADS: usize = 1 << 12;
    pub const LAYERS: usize = 1 << 12;
    pub const BLOCK: usize = 1 << 20;
    /// Token ids are stored as `u32`.
    pub const VOCAB: usize = u32::MAX as usize;
    pub const BATCH: usize = 1 << 20;
    pub const ITERS: usize = 1_000_000_000;
    /// Windows one evaluation scores (`eval_iters × batch_size`); their starts are listed.
    pub const EVAL_WINDOWS: usize = 1 << 24;
}

/// Full validation of a config about to be trained: shape checks, the backend (compiled in,
/// in a precision it runs) and the data file. A run read back is only shape-checked: its
/// commands take `--backend`, and a backend not compiled in is refused when it is used.
pub fn validate(spec: &RunSpec) -> Result<(), ConfigError> {
    validate_shape(spec)?;
    validate_backend(&spec.backend)?;
    let files: Vec<(&'static str, &std::path::Path)> = match spec.data.kind {
        DataKind::Text | DataKind::Instructions | DataKind::Preferences => {
            vec![("data.path", spec.data.path.as_path())]
        }
        DataKind::Parallel => [Split::Train, Split::Valid, Split::Test]
            .into_iter()
            .filter_map(|s| spec.data.pair_files(s))
            .flatten()
            .collect(),
    };
    for (key, path) in files {
        if !path.is_file() {
            return Err(invalid(
                key,
                format!("{:?}", path.display().to_string()),
                "an existing text file, plain or .gz (paths are relative to the working directory)",
            ));
        }
    }
    Ok(())
}

/// A GPT's data: a corpus, or records (preferences with the run they tune).
fn validate_gpt_data(gpt: &GptSpec, data: &DataSection) -> Result<(), ConfigError> {
    let expected = match data.kind {
        DataKind::Text => "the text corpus to train on",
        _ => "the records to train on (JSON or JSON Lines)",
    };
    if data.path.as_os_str().is_empty() {
        return Err(invalid("data.path", "\"\"", expected));
    }
    if data.kind == DataKind::Preferences && gpt.init_from.is_none() {
        return Err(invalid(
            "model.init_from",
            "nothing",
            "the finished run to tune with DPO for data.kind = \"preferences\" (its weights \
             are the frozen reference model)",
        ));
    }
    Ok(())
}

/// A seq2seq model on parallel data, a GPT on text or records; both files of every pair given.
fn validate_task(spec: &RunSpec) -> Result<(), ConfigError> {
    let data = &spec.data;
    let seq2seq = match (&spec.model, data.kind) {
        (ModelSpec::Gpt(gpt), DataKind::Text | DataKind::Instructions | DataKind::Preferences) => {
            return validate_gpt_data(gpt, data)
        }
        (ModelSpec::Seq2Seq(_), kind @ (DataKind::Instructions | DataKind::Preferences)) => {
            return Err(invalid(
                "data.kind",
                format!("\"{kind}\""),
                "\"parallel\" for model.kind = \"seq2seq\" (instructions train a GPT)",
            ))
        }
        (ModelSpec::Seq2Seq(seq2seq), DataKind::Parallel) => seq2seq,
        (ModelSpec::Gpt(_), DataKind::Parallel) => {
            return Err(invalid(
                "model.kind",
                "\"gpt\"",
                "\"seq2seq\" for data.kind = \"parallel\" (a GPT trains on data.kind = \"text\")",
            ))
        }
        (ModelSpec::Seq2Seq(_), DataKind::Text) => {
            return Err(invalid(
                "data.kind",
                "\"text\"",
                "\"parallel\" with data.source and data.target for model.kind = \"seq2seq\"",
            ))
        }
    };
    if data.pair_files(Split::Train).is_none() {
        return Err(invalid(
            "data.source",
            format!("{:?}", data.source),
            "data.source and data.target, aligned files of sources and targets",
        ));
    }
    for (given, keys) in [
        ([&data.valid_source, &data.valid_target], ["data.valid_source", "data.valid_target"]),
        ([&data.test_source, &data.test_target], ["data.test_source", "data.test_target"]),
    ] {
        if given[0].is_some() != given[1].is_some() {
            let (missing, present) =
                if given[0].is_none() { (keys[0], keys[1]) } else { (keys[1], keys[0]) };
            return Err(invalid(missing, "nothing", format!("a file to pair with {present}")));
        }
    }
    if !data.tokenizer.is_bpe() {
        return Err(invalid(
            "data.tokenizer",
            format!("{:?}", data.tokenizer.to_string()),
            "\"bpe:train:<vocab size>\" (a joint BPE with <pad>, <bos> and <eos>) or \
             \"bpe:<tokenizer.json>\" that has them, for parallel data",
        ));
    }
    if seq2seq.positions == PositionKind::Rope {
        return Err(invalid(
            "model.positions",
            "\"rope\"",
            "\"sinusoidal\" or \"learned\" for a seq2seq model",
        ));
    }
    if let Some(n) = seq2seq.n_decoder_layers {
        count("model.n_decoder_layers", n, limits::LAYERS)?;
    }
    Ok(())
}

/// Checks that need nothing but the config itself.
pub fn validate_shape(spec: &RunSpec) -> Result<(), ConfigError> {
    validate_run_and_data(spec)?;
    validate_model(&spec.model)?;
    validate_training(spec)?;
    validate_task(spec)?;
    validate_distributed(spec)
}

fn validate_run_and_data(spec: &RunSpec) -> Result<(), ConfigError> {
    let run = &spec.run;
    if run.name.is_empty() || run.name.contains(['/', '\\']) || run.name.starts_with('.') {
        return Err(invalid("run.name", format!("{:?}", run.name), "a plain directory name"));
    }
    let data = &spec.data;
    if !(data.val_fraction > 0.0 && data.val_fraction < 1.0) {
        return Err(invalid("data.val_fraction", data.val_fraction, "a number in (0, 1)"));
    }
    positive("data.min_count", data.min_count)?;
    if let Some(stride) = data.stride {
        positive("data.stride", stride)?;
    }
    Ok(())
}

fn validate_model(model: &ModelSpec) -> Result<(), ConfigError> {
    let (d_model, n_heads) = (model.d_model(), model.n_heads());
    count("model.d_model", d_model, limits::WIDTH)?;
    count("model.n_heads", n_heads, limits::HEADS)?;
    count("model.n_layers", model.n_layers(), limits::LAYERS)?;
    count("model.block_size", model.block_size(), limits::BLOCK)?;
    count("model.d_ff", model.d_ff(), limits::WIDTH * 8)?;
    if !d_model.is_multiple_of(n_heads) {
        return Err(invalid(
            "model.n_heads",
            n_heads,
            format!("a divisor of model.d_model ({d_model})"),
        ));
    }
    if let Some(v) = model.vocab_size() {
        count("model.vocab_size", v, limits::VOCAB)?;
    }
    let (dropout, norm_eps) = match model {
        ModelSpec::Gpt(m) => (m.dropout, m.norm_eps),
        ModelSpec::Seq2Seq(m) => (m.dropout, m.norm_eps),
    };
    if !(0.0..1.0).contains(&dropout) {
        return Err(invalid("model.dropout", dropout, "a probability in [0, 1)"));
    }
    if !(norm_eps > 0.0 && norm_eps < 1.0) {
        return Err(invalid("model.norm_eps", norm_eps, "a small positive number such as 1e-5"));
    }
    match model {
        ModelSpec::Gpt(m) if m.positions == PositionKind::Rope => validate_rope(m),
        _ => Ok(()),
    }
}

fn validate_rope(m: &super::GptSpec) -> Result<(), ConfigError> {
    let head_dim = m.d_model / m.n_heads;
    if !head_dim.is_multiple_of(2) {
        return Err(invalid(
            "model.positions",
            "\"rope\"",
            format!(
                "an even head size for rotary pairs; d_model / n_heads = {} / {} = {head_dim}",
                m.d_model, m.n_heads
            ),
        ));
    }
    if !(m.rope_theta > 1.0 && m.rope_theta.is_finite()) {
        return Err(invalid("model.rope_theta", m.rope_theta, "a base above 1, such as 10000"));
    }
    Ok(())
}

fn validate_training(spec: &RunSpec) -> Result<(), ConfigError> {
    let t = &spec.training;
    count("training.batch_size", t.batch_size, limits::BATCH)?;
    count("training.max_iters", t.max_iters, limits::ITERS)?;
    count("training.grad_accumulation", t.grad_accumulation, limits::BATCH)?;
    count("training.eval_interval", t.eval_interval, limits::ITERS)?;
    count("training.eval_iters", t.eval_iters, limits::EVAL_WINDOWS / t.batch_size)?;
    count("training.keep_checkpoints", t.keep_checkpoints, limits::ITERS)?;
    if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
        return Err(invalid("training.learning_rate", t.learning_rate, "a positive number"));
    }
    if !(t.min_lr >= 0.0 && t.min_lr <= t.learning_rate) {
        let expected = format!("a number in [0, training.learning_rate = {}]", t.learning_rate);
        return Err(invalid("training.min_lr", t.min_lr, expected));
    }
    if t.warmup_iters > t.max_iters {
        return Err(invalid(
            "training.warmup_iters",
            t.warmup_iters,
            format!("at most training.max_iters ({})", t.max_iters),
        ));
    }
    if !(t.weight_decay >= 0.0 && t.weight_decay.is_finite()) {
        return Err(invalid("training.weight_decay", t.weight_decay, "a number >= 0"));
    }
    for (key, beta) in [("training.beta1", t.beta1), ("training.beta2", t.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(invalid(key, beta, "a number in [0, 1)"));
        }
    }
    if !(t.grad_clip >= 0.0 && t.grad_clip.is_finite()) {
        return Err(invalid(
            "training.grad_clip", t.grad_clip, "a number >= 0 (0 disables clipping)",
        ));
    }
    let every = t.checkpoint_interval();
    if every == 0 || !every.is_multiple_of(t.eval_interval) {
        let expected = format!(
            "a positive multiple of training.eval_interval ({}): checkpoints are taken after \
             validation",
            t.eval_interval
        );
        return Err(invalid("training.checkpoint_interval", every, expected));
    }
    if !(t.dpo_beta > 0.0 && t.dpo_beta.is_finite()) {
        return Err(invalid("training.dpo_beta", t.dpo_beta, "a positive number, such as 0.1"));
    }
    if !(0.0..1.0).contains(&t.label_smoothing) {
        return Err(invalid(
            "training.label_smoothing", t.label_smoothing, "a probability in [0, 1), such as 0.1",
        ));
    }
    Ok(())
}

/// A backend compiled into this binary, in a precision it runs.
fn validate_backend(backend: &BackendSection) -> Result<(), ConfigError> {
    let name = backend.name;
    if !name.compiled_in() {
        return Err(invalid(
            "backend.name",
            format!("{:?}", name.as_str()),
            format!(
                "a backend compiled into this binary; rebuild with `cargo run --release \
                 --features {} -- …`",
                name.feature()
            ),
        ));
    }
    if !name.precisions().contains(&backend.precision) {
        let can: Vec<&str> = name.precisions().iter().map(|p| p.as_str()).collect();
        return Err(invalid(
            "backend.precision",
            format!("{:?}", backend.precision.as_str()),
            format!("a precision the {name} backend runs: {}", can.join(", ")),
        ));
    }
    Ok(())
}

/// A consistent `[distributed]` section, on a build and a model that can use it.
fn validate_distributed(spec: &RunSpec) -> Result<(), ConfigError> {
    let d = &spec.distributed;
    positive("distributed.timeout_secs", d.timeout_secs as usize)?;
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = d.devices.iter().find(|&&i| !seen.insert(i)) {
        return Err(invalid(
            "distributed.devices",
            format!("{:?}", d.devices),
            format!("distinct device indices ({twice} is listed twice)"),
        ));
    }
    if d.local_replicas() == 1 {
        return Ok(());
    }
    if !cfg!(feature = "distributed") {
        return Err(invalid(
            "distributed.devices",
            format!("{:?}", d.devices),
            "one device: this kiln was built without the `distributed` feature \
             (cargo build --release --features distributed)",
        ));
    }
    if spec.model.as_gpt().is_none() {
        return Err(invalid(
            "distributed.devices",
            format!("{:?}", d.devices),
            "one device: data-parallel training covers model.kind = \"gpt\"",
        ));
    }
    Ok(())
}
