//! convo-sim's integration tests: every replay fixture through one `check`
//! (events, then read models), the SPEC's worked examples asserted by meaning,
//! seeded random days against the independent model, and seeded fault
//! simulation of the engine's partition machine.

mod engine;
mod faults;
mod fixtures;
mod random;
mod read_models;
mod wire;
