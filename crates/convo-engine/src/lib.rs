//! # convo-engine
//!
//! The engine. [`core`] is its deterministic heart, shared with the
//! simulator: aggregates, floor, timers and routing, with a command decided
//! first and applied once durable.

pub mod core;

pub use core::{Decided, Record, Refusal, World};
