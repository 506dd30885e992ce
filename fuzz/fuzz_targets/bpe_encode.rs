//! Any text through a byte-level BPE trained on the-verdict: decoding the ids gives the text
//! back, and encoding it as a stream gives the same ids.
#![no_main]

use std::sync::OnceLock;

use kiln::tokenizer::bpe::train::{train_on_text, BpeTrainOptions};
use kiln::tokenizer::bpe::BpeTokenizer;
use kiln::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static BpeTokenizer {
    static BPE: OnceLock<BpeTokenizer> = OnceLock::new();
    BPE.get_or_init(|| {
        let options = BpeTrainOptions { vocab_size: 400, specials: vec!["<|endoftext|>".into()], progress: false };
        train_on_text(include_str!("../../data/the-verdict.txt"), &options).expect("trains")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let bpe = tokenizer();
    let ids = bpe.encode(&text).expect("byte-level BPE encodes any text");
    assert_eq!(bpe.decode(&ids), text, "decode(encode(text)) differs");
    let mut streamed = Vec::new();
    kiln::tokenizer::encode_reader(bpe, text.as_bytes(), |chunk, _| {
        streamed.extend_from_slice(chunk);
        Ok(())
    })
    .expect("streams");
    assert_eq!(streamed, ids, "streaming encode differs");
});
