//! # convo-engine
//!
//! The engine. [`core`] is its deterministic heart: aggregates, floor,
//! timers and routing, with a command decided first and applied once
//! durable. [`machine`] is one partition as a sans-IO state machine around
//! it (ordering, mailboxes, retries, limits), which every driver runs:
//! [`serve`] (NATS, wall clock, pipelined), [`runtime`] (one step at a time,
//! virtual time), the simulator and the fault simulator in `convo-sim`.
//! [`group_commit`] sits between a machine's appends and the store (atomic
//! batches under load). [`intake`] parses command requests and shapes their replies; [`read_door`]
//! authorizes reads where the read models run without the engine; [`scenario`]
//! reads the timed-command files that `replay-traffic` and `simulate` run.

pub mod access;
pub mod clock;
pub mod cluster;
pub mod contract;
pub mod core;
pub mod group_commit;
pub mod intake;
pub mod machine;
pub mod ownership;
pub mod read_door;
pub mod reply;
pub mod runtime;
pub mod scenario;
pub mod serve;
pub mod snapshot;

pub use core::{Decided, Record, Refusal, Skipped, World};
pub use machine::{Failure, Machine, MachineConfig, Outcome};
pub use runtime::{Engine, EngineError};
