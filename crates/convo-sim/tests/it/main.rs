//! convo-sim's integration tests: every replay fixture through one `check`
//! (events, then read models), the SPEC's worked examples asserted by meaning,
//! and seeded random days against the independent model.

mod fixtures;
mod random;
mod read_models;
