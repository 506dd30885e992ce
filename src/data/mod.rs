//! Corpus → token file → train/val splits → batches of windows.

mod corpus;
mod loader;
pub mod parallel;
mod windows;

pub use corpus::{read_text, Corpus, DataError};
pub use loader::{
    FixedWindows, LmBatch, MicroBatches, StopCheck, TrainBatches, TrainWindows, WindowBatches,
};
pub use parallel::{FixedPairs, PairBatches, PairTokens, Seq2SeqBatch, Specials};
pub use windows::{WindowOrder, WindowStarts};
