//! # convo-engine
//!
//! The engine. [`core`] is its deterministic heart, shared with the
//! simulator: aggregates, floor, timers and routing, with a command decided
//! first and applied once durable. [`runtime`] runs it on an event store
//! (JetStream in production), and [`intake`] takes commands as NATS
//! request/reply.

pub mod clock;
pub mod core;
pub mod intake;
pub mod pipeline;
pub mod runtime;
pub mod serve;

pub use core::{Decided, Record, Refusal, World};
pub use runtime::{Engine, EngineError, Outcome};
