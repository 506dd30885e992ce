//! kiln: train Transformer language models from scratch on Burn.
//!
//! Data flows one way, and each module imports only those above it in this list:
//! [`files`] and [`config`] at the bottom, [`memory`] (the preflight), then [`tokenizer`] → [`data`] → [`kernels`] →
//! [`model`] → [`backend`] (the one place a backend is named) → [`run`] (owns
//! `artifacts/<run>/`) → [`generate`], [`translate`] → [`distributed`] → [`train`] (Burn's
//! Learner) → [`interop`], [`plot`] → [`cli`]. `ARCHITECTURE.md` is the map.

pub mod backend;
pub mod cli;
pub mod config;
pub mod data;
pub mod distributed;
pub mod files;
pub mod generate;
pub mod interop;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod plot;
pub mod run;
pub mod serve;
pub mod tokenizer;
pub mod train;
pub mod translate;
