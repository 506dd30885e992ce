//! Corpus → token file → train/val splits → batches of windows.

mod corpus;
mod loader;

pub use corpus::{Corpus, DataError};
pub use loader::{FixedWindows, LmBatch, RandomWindows};
