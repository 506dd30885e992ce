//! Corpus → token file → train/val splits → batches of windows; sentence pairs and
//! instruction records → padded batches.

mod batches;
mod buckets;
mod corpus;
pub mod instructions;
mod loader;
pub mod parallel;
pub mod preferences;
mod validation;
mod windows;

pub use batches::{Batcher, FixedBatches, IndexIter};
pub use corpus::{read_text, Corpus, DataError, TokenCache};
pub use instructions::{Example, ExampleBatches, Examples, FixedExamples, Record};
pub use loader::{
    LmBatch, MicroBatches, Objective, StopCheck, TrainBatches, TrainWindows, WindowBatches, Windows,
};
pub use parallel::{FixedPairs, PairBatches, PairTokens, Seq2SeqBatch, Specials};
pub use validation::FixedWindows;
pub use windows::{WindowOrder, WindowStarts};
