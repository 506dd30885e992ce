//! kiln: train Transformer language models from scratch on Burn.
//!
//! Data flows one way: [`config`] → [`tokenizer`] → [`data`] → [`backend::dispatch`] →
//! [`train`] ([`model`] + Burn's Learner) → `artifacts/<run>/` ([`run_dir`]) → [`generate`],
//! `eval`, `inspect`, [`plot`] and `export` ([`interop`]) read the run back.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod generate;
pub mod interop;
pub mod model;
pub mod plot;
pub mod run_dir;
pub mod tokenizer;
pub mod train;
pub mod translate;
