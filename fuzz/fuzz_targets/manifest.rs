//! Any bytes as a run's `kiln-run.json`: reading it gives a manifest or an error; a manifest
//! read survives a write and a read unchanged; and every command that consults it (opening
//! the run, verifying a checkpoint against it, checking an output path) errors or passes,
//! never panics.
#![no_main]

use std::sync::OnceLock;

use kiln::run::{CheckpointState, Manifest, RunDir};
use libfuzzer_sys::fuzz_target;

/// A run folder with a config, a tokenizer and one checkpoint state, made once per process.
fn run() -> &'static RunDir {
    static RUN: OnceLock<RunDir> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fuzz-manifest-{}", std::process::id()));
        let run = RunDir::new(&root);
        std::fs::create_dir_all(run.checkpoints()).expect("temp dir is writable");
        let files = [
            (run.config(), include_str!("../seeds/config/tiny.toml")),
            (run.tokenizer(), r#"{"kind": "char", "chars": "abc", "unk": false}"#),
            (run.checkpoint_state(10), r#"{"version": 1, "epoch": 1, "step": 10}"#),
        ];
        for (path, text) in files {
            std::fs::write(path, text).expect("temp dir is writable");
        }
        run
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = Manifest::from_bytes(data) {
        let json = serde_json::to_vec(&manifest).expect("a manifest serializes");
        assert_eq!(Manifest::from_bytes(&json).as_ref(), Ok(&manifest));
    }
    let run = run();
    std::fs::write(run.manifest(), data).expect("temp dir is writable");
    let _ = kiln::run::open_run(run.root());
    let _ = CheckpointState::verify(run, 10);
    let _ = kiln::run::check_output("--out", &run.config(), []);
});
