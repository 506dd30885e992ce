//! The GPT's shapes, causality, KV cache and checkpoint round trip.

use burn::prelude::*;
use burn::record::Recorder;
use kiln::config::{Activation, NormKind, PositionKind};
use kiln::model::{Gpt, GptConfig, Norm};
use kiln::run::checkpoint::{load_record, CheckpointRecorder};

type B = burn::backend::NdArray<f32>;

fn model(tie: bool) -> Gpt<B> {
    GptConfig::new(17, 32, 4, 2, 64, 16).with_tie_embeddings(tie).init(&Default::default())
}

/// Every architecture choice away from GPT-2's, alone and together (the CS336 model).
fn variants() -> Vec<(&'static str, GptConfig)> {
    let base = || GptConfig::new(17, 32, 4, 2, 64, 16);
    vec![
        ("gpt-2", base()),
        ("rope", base().with_positions(PositionKind::Rope)),
        ("sinusoidal", base().with_positions(PositionKind::Sinusoidal)),
        ("rmsnorm", base().with_norm(NormKind::RmsNorm)),
        ("swiglu", base().with_activation(Activation::SwiGlu)),
        ("relu", base().with_activation(Activation::Relu)),
        ("post-norm", base().with_norm_first(false)),
        ("no-qkv-bias", base().with_qkv_bias(false)),
        (
            "cs336",
            base()
                .with_positions(PositionKind::Rope)
                .with_norm(NormKind::RmsNorm)
                .with_activation(Activation::SwiGlu)
                .with_bias(false)
                .with_qkv_bias(false)
                .with_tie_embeddings(false),
        ),
    ]
}

fn tokens(ids: &[i64]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), &Default::default())
}

fn values(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

#[test]
fn logits_have_batch_seq_vocab_shape() {
    let batch = Tensor::<B, 2, Int>::zeros([3, 10], &Default::default());
    assert_eq!(model(true).forward(batch).dims(), [3, 10, 17]);
    assert_eq!(
        model(false).forward(Tensor::zeros([2, 16], &Default::default())).dims(),
        [2, 16, 17]
    );
}

#[test]
fn parameter_counts_follow_the_architecture() {
    // per layer: 2 LayerNorms (2*64) + qkv (32*96+96) + proj (32*32+32) + fc (32*64+64) + proj (64*32+32)
    let per_layer = 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32);
    let embeddings = 17 * 32 + 16 * 32;
    let counts = model(true).param_counts();
    assert_eq!(counts.total, embeddings + 2 * per_layer + 64);
    assert_eq!(counts.embedding, embeddings);
    assert_eq!(model(false).param_counts().total, counts.total + 32 * 17);
}

#[test]
fn variant_parameter_counts() {
    let count = |config: &GptConfig| config.init::<B>(&Default::default()).param_counts();
    let counts: Vec<_> = variants().iter().map(|(_, c)| count(c)).collect();
    let [base, rope, sinusoidal, rms, swiglu, relu, post, no_qkv_bias, cs336]: [_; 9] =
        counts.try_into().unwrap();
    let positions = 16 * 32;
    assert_eq!(rope.total, base.total - positions, "RoPE has no position table");
    assert_eq!(
        (sinusoidal.total, sinusoidal.embedding),
        (base.total - positions, 17 * 32),
        "the sinusoidal table is not a parameter"
    );
    assert_eq!(rms.total, base.total - 5 * 32, "RMSNorm has no beta (2 per layer + ln_f)");
    assert_eq!(
        swiglu.total,
        base.total + 2 * (32 * 64 + 64),
        "SwiGLU adds a gate projection per layer"
    );
    assert_eq!((relu.total, post.total), (base.total, base.total));
    assert_eq!(no_qkv_bias.total, base.total - 2 * 96);
    // CS336: per layer 2 RMSNorm gammas + qkv + proj + fc + gate + proj, no biases.
    let per_layer = 2 * 32 + 32 * 96 + 32 * 32 + 2 * 32 * 64 + 64 * 32;
    assert_eq!(cs336.total, 17 * 32 + 2 * per_layer + 32 + 32 * 17);
}

#[test]
fn changing_a_later_token_leaves_earlier_logits_unchanged() {
    for (name, config) in variants() {
        let m: Gpt<B> = config.init(&Default::default());
        let a = values(m.forward(tokens(&[1, 2, 3, 4, 5, 6])));
        let b = values(m.forward(tokens(&[1, 2, 3, 9, 9, 9])));
        let vocab = 17;
        assert_eq!(
            a[..3 * vocab],
            b[..3 * vocab],
            "{name}: positions 0..3 must not see positions 3.."
        );
        assert_ne!(a[3 * vocab..4 * vocab], b[3 * vocab..4 * vocab], "{name}");
    }
}

#[test]
fn kv_cache_matches_full_recomputation() {
    // A prefill, then a chunk of several tokens on top of the cache (its causal mask and, with
    // RoPE, its rotations are offset by the cached positions), then one token at a time.
    for (name, config) in variants() {
        let m: Gpt<B> = config.init(&Default::default());
        let ids = [3i64, 1, 4, 1, 5, 9, 2, 6];
        let full = values(m.forward(tokens(&ids)));
        let mut cache = m.new_cache();
        for chunk in [0..3, 3..5, 5..6, 6..7, 7..8] {
            let last = chunk.end - 1;
            let got: Vec<f32> =
                m.forward_cached(tokens(&ids[chunk]), &mut cache).into_data().to_vec().unwrap();
            let expected = &full[last * 17..(last + 1) * 17];
            assert!(
                expected.iter().zip(&got).all(|(e, g)| (e - g).abs() < 1e-5),
                "{name}: position {last}"
            );
        }
        assert_eq!(cache.len(), ids.len());
    }
}

#[test]
fn positions_matter_in_every_variant() {
    // The same token twice must get different logits at different positions, or the model
    // is blind to order (a RoPE that rotated nothing, a table never added).
    for (name, config) in variants() {
        let m: Gpt<B> = config.init(&Default::default());
        let logits = values(m.forward(tokens(&[7, 7, 7])));
        assert_ne!(
            logits[17..34],
            logits[34..51],
            "{name}: positions 1 and 2 give the same logits"
        );
    }
}

#[test]
fn rope_scores_depend_only_on_relative_position() {
    // RoPE's defining property, through Burn's RotaryEncoding as kiln configures it:
    // rot(q, m) · rot(k, n) is the same for (m, n) = (2, 5) and (9, 12).
    let device = Default::default();
    let rope = burn::nn::RotaryEncodingConfig::new(16, 8).init::<B>(&device);
    let q =
        Tensor::<B, 4>::random([1, 1, 1, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let k =
        Tensor::<B, 4>::random([1, 1, 1, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let score = |m: usize, n: usize| -> f32 {
        (rope.apply(q.clone(), m) * rope.apply(k.clone(), n)).sum().into_scalar()
    };
    assert!((score(2, 5) - score(9, 12)).abs() < 1e-4, "{} vs {}", score(2, 5), score(9, 12));
    assert!((score(2, 5) - score(2, 9)).abs() > 1e-4, "another distance gives another score");
}

#[test]
fn rms_norm_divides_by_the_root_mean_square() {
    let device = Default::default();
    let norm = Norm::<B>::new(NormKind::RmsNorm, 4, true, 1e-6, &device);
    let x = Tensor::<B, 2>::from_floats([[1.0, -2.0, 3.0, -4.0]], &device);
    let rms = ((1.0f32 + 4.0 + 9.0 + 16.0) / 4.0).sqrt();
    let got: Vec<f32> = norm.forward(x).into_data().to_vec().unwrap();
    let expected = [1.0 / rms, -2.0 / rms, 3.0 / rms, -4.0 / rms];
    assert!(got.iter().zip(expected).all(|(g, e)| (g - e).abs() < 1e-5), "{got:?}");
}

#[test]
fn checkpoint_save_load_gives_bit_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mpk");
    let input = tokens(&[5, 4, 3, 2, 1, 0, 16]);
    let original = model(false);
    // Parameters are initialised lazily: run the model first so the record holds the weights used.
    let expected = values(original.forward(input.clone()));
    Recorder::<B>::record(&CheckpointRecorder::default(), original.into_record(), path.clone())
        .unwrap();
    let loaded = model(false).load_record(load_record::<B, _>(&path, &Default::default()).unwrap());
    assert_eq!(expected, values(loaded.forward(input)));
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("model.mpk")], "no temporary files remain");
}

#[test]
fn truncated_checkpoint_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.mpk");
    Recorder::<B>::record(&CheckpointRecorder::default(), model(true).into_record(), path.clone())
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let result = load_record::<B, <Gpt<B> as Module<B>>::Record>(&path, &Default::default());
    let err = result.err().expect("truncated file must not load").to_string();
    assert!(err.contains("model.mpk") && err.contains("not a readable kiln model record"), "{err}");
}

#[test]
fn attention_weights_are_causal_distributions() {
    let weights = model(true).attention_weights(&[1, 5, 3, 3, 9, 2], 1, &Default::default());
    assert_eq!(weights.len(), 4, "one map per head");
    for head in &weights {
        assert_eq!(head.len(), 6);
        for (query, row) in head.iter().enumerate() {
            assert!(
                (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
                "row {query} sums to {}",
                row.iter().sum::<f32>()
            );
            assert!(
                row[query + 1..].iter().all(|&w| w == 0.0),
                "query {query} attends ahead: {row:?}"
            );
        }
    }
}

#[test]
fn torch_init_draws_pytorchs_default_weights() {
    let model: Gpt<B> = GptConfig::new(200, 64, 4, 1, 256, 16)
        .with_init(kiln::config::InitScheme::Torch)
        .with_tie_embeddings(false)
        .init(&Default::default());
    let params = kiln::model::param_values(&model);
    let get =
        |name: &str| params.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("{name}"));
    let std = |v: &[f32]| {
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    let wte = std(&get("wte.weight").values);
    assert!((wte - 1.0).abs() < 0.05, "embeddings N(0, 1): std {wte}");
    for (name, fan_in) in [
        ("blocks.0.mlp.c_fc.weight", 64.0f32),
        ("blocks.0.mlp.c_proj.weight", 256.0),
        ("blocks.0.mlp.c_fc.bias", 64.0),
    ] {
        let values = &get(name).values;
        let bound = 1.0 / fan_in.sqrt();
        assert!(values.iter().all(|v| v.abs() <= bound), "{name} within ±1/√{fan_in}");
        assert!(
            (std(values) - bound / 3f32.sqrt()).abs() < 0.15 * bound,
            "{name} uniform: std {}",
            std(values)
        );
    }
}
