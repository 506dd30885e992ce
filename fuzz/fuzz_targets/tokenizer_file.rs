//! Any bytes as a tokenizer.json (kiln's char/word/tiktoken files or a Hugging Face BPE):
//! loading returns a tokenizer or an error, and a loaded tokenizer encodes and decodes
//! without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(tokenizer) = kiln::tokenizer::from_json(value) else { return };
    let text = "First Citizen:\nBefore we proceed any further, hear me speak. <|endoftext|> Ünïcödé 日本";
    if let Ok(ids) = tokenizer.encode(text) {
        let _ = tokenizer.decode(&ids);
    }
    let vocab = tokenizer.vocab_size() as u32;
    let _ = tokenizer.decode(&[0, vocab.saturating_sub(1), vocab, u32::MAX]);
});
