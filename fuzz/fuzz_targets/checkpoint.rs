//! Any bytes as a model checkpoint: loading gives a record or an error, never a panic, an
//! abort or code execution (Burn's MessagePack records hold data only).
#![no_main]

use kiln::model::GptRecord;
use libfuzzer_sys::fuzz_target;

type B = burn::backend::NdArray<f32>;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("kiln-fuzz-checkpoint-{}.mpk", std::process::id()));
    std::fs::write(&path, data).expect("temp dir is writable");
    let _ = kiln::run::checkpoint::load_record::<B, GptRecord<B>>(&path, &Default::default());
});
