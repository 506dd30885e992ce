//! Corpus → token file → train/val splits → batches of windows.

mod batches;
mod corpus;
mod loader;
pub mod parallel;
mod validation;
mod windows;

pub use batches::{Batcher, FixedBatches, IndexIter};
pub use corpus::{read_text, Corpus, DataError, TokenCache};
pub use loader::{
    LmBatch, MicroBatches, StopCheck, TrainBatches, TrainWindows, WindowBatches, Windows,
};
pub use parallel::{FixedPairs, PairBatches, PairTokens, Seq2SeqBatch, Specials};
pub use validation::FixedWindows;
pub use windows::{WindowOrder, WindowStarts};
