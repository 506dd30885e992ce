//! `kiln bench train` (on one device and on two) and `kiln bench generate` print figures that add up, and refuse bad flags
//! with messages that name them.

mod common;

use serde_json::Value;

fn bench_json(args: &[&str]) -> Value {
    let (ok, out, err) = common::kiln(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn bench_train_reports_consistent_figures() {
    let r = bench_json(&[
        "bench", "train", "--config", "configs/tiny.toml", "--iters", "3", "--warmup", "1",
        "--json",
    ]);
    let ms = r["ms_per_iter"].as_f64().unwrap();
    // tiny.toml: batch 16 × block 32 tokens a step.
    let tokens = r["tokens_per_sec"].as_f64().unwrap() * ms / 1000.0;
    assert!((tokens - 16.0 * 32.0).abs() < 1.0, "tokens per step {tokens}: {r}");
    assert!(
        r["flops_per_sec"].as_f64().unwrap() > 0.0 && r["final_loss"].as_f64().unwrap().is_finite(),
        "{r}"
    );
    assert_eq!(r["backend"], "ndarray");
    // The bench measures the backend's SGEMM peak itself and sets the model against it.
    let peak = r["sgemm_peak_flops_per_sec"].as_f64().unwrap();
    let fraction = r["flops_per_sec"].as_f64().unwrap() / peak;
    assert!(peak > 1e8 && (r["peak_fraction"].as_f64().unwrap() - fraction).abs() < 1e-9, "{r}");
}

/// With two devices the bench also times both at once, each with the config's batch: twice
/// the tokens of a step, and an efficiency that is the speed-up per device.
#[cfg(feature = "distributed")]
#[test]
fn bench_train_on_two_devices_reports_scaling() {
    let r = bench_json(&[
        "bench", "train", "--config", "configs/tiny.toml", "--set", "distributed.devices=[0, 1]",
        "--iters", "3", "--warmup", "1", "--json",
    ]);
    let s = &r["scaling"];
    assert_eq!((&s["replicas"], &s["processes"]), (&2.into(), &1.into()), "{r}");
    let tokens =
        s["tokens_per_sec"].as_f64().unwrap() * s["ms_per_iter"].as_f64().unwrap() / 1000.0;
    assert!(
        (tokens - 2.0 * 16.0 * 32.0).abs() < 1.0,
        "tokens per step on two devices {tokens}: {r}"
    );
    let speedup = s["tokens_per_sec"].as_f64().unwrap() / r["tokens_per_sec"].as_f64().unwrap();
    assert!((s["speedup"].as_f64().unwrap() - speedup).abs() < 1e-9, "{r}");
    assert!((s["efficiency"].as_f64().unwrap() - speedup / 2.0).abs() < 1e-9, "{r}");
}

#[test]
fn bench_generate_times_every_requested_token() {
    let r = bench_json(&[
        "bench", "generate", "--config", "configs/tiny.toml", "--prompt-tokens", "5",
        "--max-new-tokens", "20", "--json",
    ]);
    assert_eq!((r["prompt_tokens"].as_u64(), r["new_tokens"].as_u64()), (Some(5), Some(20)), "{r}");
    let (first, per_token, rate) = (
        r["first_token_ms"].as_f64().unwrap(),
        r["ms_per_token"].as_f64().unwrap(),
        r["tokens_per_sec"].as_f64().unwrap(),
    );
    // 20 tokens take the first token's time plus 19 cached steps.
    let expected = 20.0 / ((first + 19.0 * per_token) / 1000.0);
    assert!((rate - expected).abs() / expected < 1e-6, "tokens/s {rate} vs {expected}: {r}");
    assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn bench_generate_rejects_a_run_longer_than_the_context() {
    let (ok, _, err) = common::kiln(&[
        "bench", "generate", "--config", "configs/tiny.toml", "--prompt-tokens", "16",
        "--max-new-tokens", "17",
    ]);
    assert!(
        !ok && err.contains("--max-new-tokens 17") && err.contains("model.block_size = 32"),
        "{err}"
    );
    let (ok, _, err) = common::kiln(&[
        "bench", "generate", "--config", "configs/tiny.toml", "--prompt-tokens", "0",
    ]);
    assert!(!ok && err.contains("--prompt-tokens 0"), "{err}");
}

/// Outside an MPI launcher there is nothing to exchange with: the bench says how to start it.
#[test]
fn bench_allreduce_needs_several_processes() {
    let (ok, _, err) = common::kiln(&["bench", "allreduce", "--floats", "1000"]);
    let expected = if cfg!(feature = "distributed") {
        "mpirun -np 2 kiln bench allreduce"
    } else {
        "--features distributed"
    };
    assert!(!ok && err.contains(expected), "{err}");
}

/// With the `tcmalloc` feature every `malloc` of the process binds to tcmalloc, libc's and
/// libtorch's included (the dynamic loader's own log says so), and `bench` names it.
#[cfg(feature = "tcmalloc")]
#[test]
fn tcmalloc_serves_every_malloc_of_the_process() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--version")
        .env("LD_DEBUG", "bindings")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let bindings: Vec<&str> = log.lines().filter(|l| l.contains("symbol `malloc'")).collect();
    assert!(!bindings.is_empty(), "the loader logged no binding of malloc:\n{log}");
    assert!(bindings.iter().all(|l| l.contains("libtcmalloc_minimal")), "{bindings:#?}");
    let r = bench_json(&[
        "bench", "train", "--config", "configs/tiny.toml", "--iters", "1", "--warmup", "0",
        "--json",
    ]);
    assert!(r["allocator"].as_str().unwrap().starts_with("gperftools"), "{r}");
}
