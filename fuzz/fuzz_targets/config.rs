//! Any bytes as a config file: loading returns a config or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("kiln-fuzz-config-{}.toml", std::process::id()));
    std::fs::write(&path, data).expect("temp dir is writable");
    let _ = kiln::config::load_with_env(&path, &[], Vec::new());
});
