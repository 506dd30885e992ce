//! Any bytes as a config file: loading returns a config or an error, never panics; a config
//! that loads is written as a run's `config.toml` and read back unchanged, and its memory
//! estimate is computed without overflow.
#![no_main]

use kiln::config::RunSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("kiln-fuzz-config-{}.toml", std::process::id()));
    std::fs::write(&path, data).expect("temp dir is writable");
    let Ok(spec) = kiln::config::load_with_env(&path, &[], Vec::new()) else {
        return;
    };
    let written = spec.to_toml();
    let read = RunSpec::from_toml(&written, "config.toml").expect("a written config reads back");
    assert_eq!(read, spec, "{written}");
    let estimate = kiln::memory::training(&spec);
    assert!(estimate.total().is_finite() && estimate.total() > 0.0, "{estimate:?}");
});
