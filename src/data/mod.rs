//! Corpus → token file → train/val splits → batches of windows.

mod corpus;
mod loader;
mod windows;

pub use corpus::{read_text, Corpus, DataError};
pub use loader::{FixedWindows, LmBatch, StopCheck, TrainWindows};
pub use windows::{WindowOrder, WindowStarts};
